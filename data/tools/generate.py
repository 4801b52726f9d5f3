"""Writes the tool-calling task: tools.json, train.jsonl and heldout.jsonl (OpenAI fine-tuning rows).

Three functions with typed arguments (tools.json): get_weather(city: string, unit: enum),
convert_currency(amount: number, from_currency: string, to_currency: string) and
create_reminder(text: string, minutes: integer). Train rows are requests that need a call (some
followed by the tool's result and a plain answer) and requests that need none (a plain answer).
Held-out rows use cities, currencies pairs, amounts and reminder texts that train never shows, so
the adapter must copy arguments out of the request, not recall them. Deterministic:
    python data/tools/generate.py   # rewrites the three files beside it
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_TRAIN, N_HELDOUT = 320, 48

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city", "unit"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "from_currency": {"type": "string"},
                    "to_currency": {"type": "string"},
                },
                "required": ["amount", "from_currency", "to_currency"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "create_reminder",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string"}, "minutes": {"type": "integer"}},
                "required": ["text", "minutes"],
            },
        },
    },
]

CITIES = {
    "train": [
        "Paris",
        "Berlin",
        "Madrid",
        "Rome",
        "Tokyo",
        "Lima",
        "Oslo",
        "Cairo",
        "Dublin",
        "Austin",
        "Boston",
        "Denver",
        "Seoul",
        "Delhi",
        "Sydney",
        "Vienna",
        "Prague",
        "Lisbon",
        "Athens",
        "Nairobi",
        "Toronto",
        "Chicago",
        "Dallas",
        "Hanoi",
    ],
    "heldout": ["London", "Warsaw", "Bogota", "Helsinki", "Miami", "Osaka", "Quito", "Seattle"],
}
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "SEK"]
TASKS = {
    "train": [
        "call mom",
        "water the plants",
        "take the bread out",
        "check the oven",
        "stretch",
        "feed the cat",
        "start the laundry",
        "join the standup",
        "drink some water",
        "move the car",
        "pay the rent",
        "send the report",
        "book a dentist appointment",
        "pick up the kids",
        "email Sarah",
        "walk the dog",
        "charge my phone",
        "buy milk",
        "lock the door",
        "review the slides",
    ],
    "heldout": [
        "call the bank",
        "turn off the stove",
        "text Ahmed",
        "take my vitamins",
        "buy stamps",
        "renew the library books",
        "order pizza",
        "close the windows",
    ],
}
WEATHER = [
    "What's the weather in {city} in {unit}?",
    "How warm is it in {city}? Use {unit}.",
    "Weather for {city}, in {unit} please.",
    "Tell me the current temperature in {city} in {unit}.",
    "Is it cold in {city} right now? Answer in {unit}.",
]
CONVERT = [
    "Convert {amount} {src} to {dst}.",
    "How much is {amount} {src} in {dst}?",
    "What is {amount} {src} worth in {dst}?",
    "Change {amount} {src} into {dst}.",
]
REMIND = [
    "Remind me to {text} in {minutes} minutes.",
    "In {minutes} minutes, remind me to {text}.",
    "Set a reminder to {text} in {minutes} minutes.",
    "Please remind me in {minutes} minutes to {text}.",
]
PLAIN = [
    ("Hi there!", "Hello! How can I help you today?"),
    ("Thanks, that's all.", "You're welcome! Have a great day."),
    ("What can you do?", "I can check the weather, convert currencies and set reminders."),
    ("Who are you?", "I am a helpful assistant that can use tools."),
    ("Good morning!", "Good morning! What can I do for you?"),
    ("Tell me a short joke.", "Why did the tomato blush? It saw the salad dressing."),
]


def call(name: str, arguments: dict) -> dict:
    return {
        "role": "assistant",
        "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
        ],
    }


def request(rng: random.Random, split: str) -> tuple[str, str, dict, str]:
    """(user text, function, arguments, a plain answer to give after the tool's result)."""
    kind = rng.choice(["weather", "convert", "remind"])
    if kind == "weather":
        city, unit = rng.choice(CITIES[split]), rng.choice(["celsius", "fahrenheit"])
        deg = rng.randint(-5, 35) if unit == "celsius" else rng.randint(25, 95)
        return (
            rng.choice(WEATHER).format(city=city, unit=unit),
            "get_weather",
            {"city": city, "unit": unit},
            f"It is {deg} degrees {unit} in {city}.",
        )
    if kind == "convert":
        src, dst = rng.sample(CURRENCIES, 2)
        amount = rng.choice([rng.randint(2, 900), round(rng.uniform(1, 500), 2)])
        if split == "heldout":  # amounts train never shows
            amount = rng.randint(901, 5000)
        args = {"amount": amount, "from_currency": src, "to_currency": dst}
        text = rng.choice(CONVERT).format(amount=amount, src=src, dst=dst)
        return text, "convert_currency", args, f"{amount} {src} is about {round(amount * 0.9, 2)} {dst}."
    task, minutes = rng.choice(TASKS[split]), rng.choice([5, 10, 15, 20, 30, 45, 60, 90, 120])
    text = rng.choice(REMIND).format(text=task, minutes=minutes)
    return text, "create_reminder", {"text": task, "minutes": minutes}, f"Done: I will remind you to {task}."


def row(rng: random.Random, split: str) -> dict:
    if split == "train" and rng.random() < 0.15:
        user, answer = rng.choice(PLAIN)
        return {
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            "tools": TOOLS,
        }
    user, name, args, answer = request(rng, split)
    messages = [{"role": "user", "content": user}, call(name, args)]
    if split == "train" and rng.random() < 0.15:  # the round trip: the tool's result, then a plain answer
        messages += [
            {"role": "tool", "tool_call_id": "call_0", "content": json.dumps({"ok": True})},
            {"role": "assistant", "content": answer},
        ]
    return {"messages": messages, "tools": TOOLS, "parallel_tool_calls": False}


def main() -> None:
    (HERE / "tools.json").write_text(json.dumps(TOOLS, indent=2) + "\n")
    for split, n, seed in (("train", N_TRAIN, 0), ("heldout", N_HELDOUT, 1)):
        rng = random.Random(seed)
        with (HERE / f"{split}.jsonl").open("w") as fh:
            for _ in range(n):
                fh.write(json.dumps(row(rng, split)) + "\n")


if __name__ == "__main__":
    main()
