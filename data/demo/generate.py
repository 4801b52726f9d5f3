"""Generate the demo task: strict-JSON extraction of a person's details from one sentence.

    python data/demo/generate.py            # rewrites train.jsonl, heldout.jsonl and live.jsonl here

Deterministic (fixed seed); a test checks the committed files match. Held-out examples use
first names, surnames and cities that never occur in training, so a model can only score by
learning the task (copy fields into the exact format), not by memorising answers.
Scoring is exact match of the assistant's whole reply against the reference string.

live.jsonl is the users' traffic after the rollouts, which the demo's loop step has them rate: drawn
from the held-out vocabulary, like the golden set (heldout.jsonl is a frozen sample of that traffic),
but never one of the golden prompts. v1 and v2 never trained on those names; the version the loop
trains from the ratings does, which is what a loop is for.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FIRST = [
    "Maria",
    "John",
    "Aisha",
    "Kenji",
    "Lucia",
    "Omar",
    "Greta",
    "Pavel",
    "Nadia",
    "Samuel",
    "Ingrid",
    "Tariq",
    "Elena",
    "Diego",
    "Mei",
    "Hugo",
    "Zara",
    "Felix",
    "Amara",
    "Bruno",
    "Chloe",
    "Ivan",
    "Leila",
    "Mateo",
    "Noor",
    "Oscar",
    "Priya",
    "Rafael",
    "Sofia",
    "Tomas",
]
LAST = [
    "Lopez",
    "Smith",
    "Khan",
    "Tanaka",
    "Rossi",
    "Haddad",
    "Berg",
    "Novak",
    "Petrova",
    "Okafor",
    "Larsen",
    "Aziz",
    "Costa",
    "Ramirez",
    "Chen",
    "Dubois",
    "Ali",
    "Weber",
    "Mensah",
    "Silva",
]
CITY = [
    "Lisbon",
    "Chicago",
    "Lagos",
    "Osaka",
    "Turin",
    "Beirut",
    "Oslo",
    "Prague",
    "Kyiv",
    "Accra",
    "Bergen",
    "Cairo",
    "Porto",
    "Quito",
    "Hanoi",
    "Lyon",
    "Dubai",
    "Munich",
    "Nairobi",
    "Recife",
]
JOB = [
    "nurse",
    "teacher",
    "pilot",
    "chef",
    "architect",
    "plumber",
    "lawyer",
    "baker",
    "engineer",
    "dentist",
    "farmer",
    "journalist",
    "pharmacist",
    "electrician",
    "librarian",
]
HELDOUT_FIRST = ["Beatriz", "Yusuf", "Hana", "Lars", "Carmen", "Dmitri", "Esi", "Jonas"]
HELDOUT_LAST = ["Moreau", "Ivanova", "Sato", "Nilsen", "Ortega", "Kowalski"]
HELDOUT_CITY = ["Seville", "Tallinn", "Kyoto", "Dakar", "Zurich", "Manila"]

TEMPLATES = [
    "{name}, {age}, moved to {city} last spring to work as a {job}.",
    "Meet {name}: a {age}-year-old {job} living in {city}.",
    "At {age}, {name} is the busiest {job} in {city}.",
    "{name} ({age}) works as a {job} and calls {city} home.",
    "The new {job} in {city} is {name}, who just turned {age}.",
    "Born {age} years ago, {name} now works in {city} as a {job}.",
]
INSTRUCTION = "Extract the person's name, age, city and job as one line of JSON with keys name, age, city, job."
SEED = 1234


def make_example(rng: random.Random, firsts: list[str], lasts: list[str], cities: list[str]) -> dict:
    name = f"{rng.choice(firsts)} {rng.choice(lasts)}"
    age, city, job = rng.randint(19, 71), rng.choice(cities), rng.choice(JOB)
    sentence = rng.choice(TEMPLATES).format(name=name, age=age, city=city, job=job)
    answer = json.dumps({"name": name, "age": age, "city": city, "job": job})
    return {
        "messages": [
            {"role": "user", "content": f"{INSTRUCTION}\n\n{sentence}"},
            {"role": "assistant", "content": answer},
        ]
    }


def generate(n_train: int = 480, n_heldout: int = 48, n_live: int = 96) -> dict[str, list[dict]]:
    """{file name: rows}: train, held-out (the golden set) and live (the traffic the loop's users rate)."""
    rng = random.Random(SEED)
    train = [make_example(rng, FIRST, LAST, CITY) for _ in range(n_train)]
    heldout = [make_example(rng, HELDOUT_FIRST, HELDOUT_LAST, HELDOUT_CITY) for _ in range(n_heldout)]
    golden = {row["messages"][0]["content"] for row in heldout}
    live: list[dict] = []
    while len(live) < n_live:
        row = make_example(rng, HELDOUT_FIRST, HELDOUT_LAST, HELDOUT_CITY)
        if row["messages"][0]["content"] not in golden:
            live.append(row)
    return {"train.jsonl": train, "heldout.jsonl": heldout, "live.jsonl": live}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    here = Path(__file__).parent
    for name, rows in generate().items():
        write_jsonl(here / name, rows)
        print(f"wrote {len(rows)} examples to {here / name}")
