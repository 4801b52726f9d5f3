"""Generate the demo task: strict-JSON extraction of a person's details from one sentence.

    python data/demo/generate.py            # rewrites train.jsonl and heldout.jsonl here

Deterministic (fixed seed); a test checks the committed files match. Held-out examples use
first names, surnames and cities that never occur in training, so a model can only score by
learning the task (copy fields into the exact format), not by memorising answers.
Scoring is exact match of the assistant's whole reply against the reference string.
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


def generate(n_train: int = 480, n_heldout: int = 48) -> tuple[list[dict], list[dict]]:
    rng = random.Random(SEED)
    train = [make_example(rng, FIRST, LAST, CITY) for _ in range(n_train)]
    heldout = [make_example(rng, HELDOUT_FIRST, HELDOUT_LAST, HELDOUT_CITY) for _ in range(n_heldout)]
    return train, heldout


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    here = Path(__file__).parent
    train_rows, heldout_rows = generate()
    write_jsonl(here / "train.jsonl", train_rows)
    write_jsonl(here / "heldout.jsonl", heldout_rows)
    print(f"wrote {len(train_rows)} train and {len(heldout_rows)} held-out examples to {here}")
