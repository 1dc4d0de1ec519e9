"""Generate the offline demo's synthetic chat dataset (TRL `messages` format) into recipes/demo/data/.

python recipes/demo/make_data.py

Answers mix facts a model must get exactly right (invented people's towns and jobs, small sums, counting, list
reversal) with phrasing and stories drawn from weighted choices that depend on the question. A sampled answer shows
one branch of each choice; a teacher that has learned the weights gives the student all of them at every token,
which is where distillation beats fine-tuning on the same examples.

Each conversation has a `category`, the kind of its last question (the turn `hf-distill evaluate` scores): towns,
jobs, sums (sums and differences), counts, reversals or stories.

Everything comes from `random.Random` with fixed seeds, so two runs write byte-identical files.
"""

import json
import math
import os
import random
from collections.abc import Callable

SEED = 1234
NUM_TRAIN = 6000
NUM_EVAL = 300
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

PEOPLE = [
    "Brinna", "Zorvan", "Telmo", "Quessa", "Dravik", "Ilsa", "Marnok", "Pelle", "Fenwyn", "Odra", "Caspin", "Yurel",
    "Hesta", "Largo", "Nimsy", "Torvin", "Elka", "Rusk", "Wenna", "Galdor", "Sivi", "Boran", "Kettle", "Amsel",
]  # fmt: skip
TOWNS = ["Vostal", "Quillmar", "Ardenfell", "Saltmere", "Brackwood", "Dunhollow", "Ferrin", "Luskbay"]
JOBS = ["baker", "painter", "sailor", "farmer", "doctor", "teacher", "potter", "miner", "weaver", "singer"]

# Each kind of animal moves in its own ways; where a verb leads depends on the verb.
ANIMALS = {
    "otter": "swimmer", "frog": "swimmer", "duck": "swimmer", "seal": "swimmer", "turtle": "swimmer",
    "fox": "runner", "wolf": "runner", "deer": "runner", "horse": "runner", "rabbit": "runner", "dog": "runner",
    "owl": "flyer", "crow": "flyer", "bee": "flyer", "hen": "flyer",
    "cat": "climber", "bear": "climber", "goat": "climber", "mouse": "climber", "badger": "climber",
}  # fmt: skip
VERBS = {
    "swimmer": ["swam across", "dived into", "floated down"],
    "runner": ["ran through", "raced across", "walked into"],
    "flyer": ["flew over", "circled above", "landed in"],
    "climber": ["climbed up", "crept along", "jumped onto"],
}
PLACES = {
    "swam across": ["the river", "the lake", "the pond"],
    "dived into": ["the lake", "the pond", "the sea"],
    "floated down": ["the river", "the stream", "the canal"],
    "ran through": ["the forest", "the field", "the village"],
    "raced across": ["the field", "the meadow", "the bridge"],
    "walked into": ["the village", "the forest", "the barn"],
    "flew over": ["the hills", "the village", "the lake"],
    "circled above": ["the field", "the market", "the forest"],
    "landed in": ["the garden", "the market", "the barn"],
    "climbed up": ["the tree", "the hill", "the tower"],
    "crept along": ["the wall", "the fence", "the roof"],
    "jumped onto": ["the roof", "the wall", "the cart"],
}
ADJECTIVES = [
    "sleepy", "clever", "brave", "tiny", "hungry", "happy", "shy", "old", "young", "quick", "grumpy", "curious",
]  # fmt: skip
ENDINGS = [
    "found a shiny stone", "met an old friend", "took a long nap", "ate a sweet apple", "sang a little song",
    "saw a red balloon", "lost its hat", "made a new friend", "counted the clouds", "hid from the rain",
]  # fmt: skip
CODAS = [("It was a good day.", 0.4), ("Then it went home.", 0.35), ("Everyone was surprised.", 0.25)]
LIST_WORDS = ["red", "blue", "green", "cup", "box", "hat", "sun", "moon", "tree", "door", "lamp", "ship"]
# One weight profile, its values spread over each table's options in a per-entry order.
PROFILE = (0.6, 0.3, 0.1)

Pick = list[tuple[str, float]]
# A task draws a question: its prompt, its answer given a `Draw`, and its category.
Task = tuple[str, Callable[["Draw"], str], str]


class Draw:
    """Weighted choices from one generator, keeping the log-probability of the answer built from them."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.logp = 0.0

    def __call__(self, options: Pick) -> str:
        values, weights = zip(*options)
        i = self.rng.choices(range(len(values)), weights=weights)[0]
        self.logp += math.log(weights[i] / sum(weights))
        return values[i]


def spread(rng: random.Random, options: list[str]) -> Pick:
    """As many of `options` as PROFILE has weights, in a random order, weighted by PROFILE."""
    return list(zip(rng.sample(options, len(PROFILE)), PROFILE))


def build_world(rng: random.Random) -> dict:
    """The fixed facts and per-subject weights every split is sampled from."""
    return {
        "town": {p: rng.choice(TOWNS) for p in PEOPLE},
        "job": {p: rng.choice(JOBS) for p in PEOPLE},
        "adjective": {a: spread(rng, ADJECTIVES) for a in ANIMALS},
        "verb": {a: spread(rng, VERBS[kind]) for a, kind in ANIMALS.items()},
        "place": {v: spread(rng, places) for v, places in PLACES.items()},
        "ending": {p: spread(rng, ENDINGS) for p in sorted({p for places in PLACES.values() for p in places})},
    }


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def story(rng: random.Random, world: dict) -> Task:
    animal = rng.choice(list(ANIMALS))
    one_sentence = rng.random() < 0.4
    if one_sentence:
        prompt = rng.choice([f"Write one sentence about a {animal}.", f"Describe a {animal} in one sentence."])
    else:
        prompt = rng.choice([f"Tell me a short story about a {animal}.", f"Write a little story about the {animal}."])

    def answer(draw: Draw) -> str:
        opening = draw([("The", 0.5), ("A", 0.3), ("One day, a", 0.2)])
        adjective = draw(world["adjective"][animal])
        if opening != "The" and article(adjective) == "an":
            opening += "n"
        verb = draw(world["verb"][animal])
        place = draw(world["place"][verb])
        text = f"{opening} {adjective} {animal} {verb} {place} and {draw(world['ending'][place])}."
        # Stories sometimes get a second sentence; a requested single sentence never does.
        if not one_sentence and draw([("coda", 0.6), ("", 0.4)]):
            text += " " + draw(CODAS)
        return text

    return prompt, answer, "stories"


def fact(rng: random.Random, world: dict) -> Task:
    person = rng.choice(PEOPLE)
    category = "towns" if rng.random() < 0.5 else "jobs"
    if category == "towns":
        town = world["town"][person]
        prompt = rng.choice([f"Where does {person} live?", f"Which town is {person} from?"])
        options = [(f"{person} lives in {town}.", 0.5), (f"{person}'s home is {town}.", 0.3), (f"In {town}.", 0.2)]
    else:
        job = world["job"][person]
        prompt = rng.choice([f"What does {person} do?", f"What is {person}'s job?"])
        options = [
            (f"{person} is {article(job)} {job}.", 0.55),
            (f"{person} works as {article(job)} {job}.", 0.3),
            (f"{article(job).capitalize()} {job}.", 0.15),
        ]
    return prompt, lambda draw: draw(options), category


def arithmetic(rng: random.Random, world: dict) -> Task:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if rng.random() < 0.5:
        op, result = "plus", a + b
        prompt = rng.choice([f"What is {a} plus {b}?", f"Add {a} and {b}."])
    else:
        a, b = max(a, b), min(a, b)
        op, result = "minus", a - b
        prompt = rng.choice([f"What is {a} minus {b}?", f"Take {b} from {a}."])
    options = [(f"{a} {op} {b} is {result}.", 0.5), (f"The answer is {result}.", 0.35), (f"{result}.", 0.15)]
    return prompt, lambda draw: draw(options), "sums"


def listing(rng: random.Random, world: dict) -> Task:
    category = "counts" if rng.random() < 0.5 else "reversals"
    if category == "counts":
        start = rng.randint(1, 14)
        end = start + rng.randint(2, 5)
        prompt = f"Count from {start} to {end}."
        items = [str(n) for n in range(start, end + 1)]
    else:
        words = rng.sample(LIST_WORDS, rng.randint(3, 4))
        prompt = f"Reverse the list: {', '.join(words)}."
        items = words[::-1]
    body = ", ".join(items) + "."
    return prompt, lambda draw: draw([(body, 0.7), (f"Sure: {body}", 0.3)]), category


SINGLE_TURN = [(story, 0.45), (fact, 0.25), (arithmetic, 0.18), (listing, 0.12)]
SHORT_TURNS = [fact, arithmetic]
TWO_TURN_SHARE = 0.1


def conversation(rng: random.Random, world: dict) -> tuple[list[dict], float, str]:
    """Messages, the log-probability of their assistant replies given the user turns, and the category of the last
    question."""
    if rng.random() < TWO_TURN_SHARE:
        tasks = [rng.choice(SHORT_TURNS), rng.choice(SHORT_TURNS)]
    else:
        tasks = rng.choices([t for t, _ in SINGLE_TURN], weights=[w for _, w in SINGLE_TURN])
    draw = Draw(rng)
    messages = []
    for task in tasks:
        prompt, answer, category = task(rng, world)
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer(draw)}]
    return messages, draw.logp, category


def write_split(path: str, name: str, count: int, rng: random.Random, world: dict) -> float:
    """Write `count` conversations as JSON lines; return their mean answer log-probability (nats)."""
    total = 0.0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for i in range(count):
            messages, logp, category = conversation(rng, world)
            total += logp
            f.write(json.dumps({"id": f"{name}-{i:05d}", "category": category, "messages": messages}) + "\n")
    return total / count


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    world = build_world(random.Random(SEED))
    # Separate streams so the eval split does not change when NUM_TRAIN does.
    for name, count, offset in (("train", NUM_TRAIN, 1), ("eval", NUM_EVAL, 2)):
        path = os.path.join(OUT_DIR, f"{name}.jsonl")
        logp = write_split(path, name, count, random.Random(SEED + offset), world)
        print(f"{path}: {count} conversations, {os.path.getsize(path)} bytes, answer entropy {-logp:.3f} nats")


if __name__ == "__main__":
    main()
