"""Generate the small, seeded chat datasets forgekit ships for its quickstart, tests and cookbooks.

No third-party data: every example is built from templates and word lists in this file, and every answer
is derived from its question by fixed rules, so a small model can learn the task in minutes while the
base model cannot produce it unprompted.

Four datasets, all OpenAI chat JSONL (the preference set also as prompt/chosen/rejected pairs) (`{"messages": [{"role": ..., "content": ...}, ...]}`):

- **Support tickets** (`write_quickstart_dataset`, task `instruction_tuning`): a customer message to the
  support desk of a fictional outdoor-gear shop (Northwind Outfitters) → a one-line JSON ticket in the
  shop's house style: category, priority (rules: urgency words, days waited, damage, double charges),
  order id, product, customer name, a templated summary and the next step the policy prescribes
  (e.g. a refund inside the 30-day window, store credit after it). About 100-150 tokens per example with
  SmolLM2's chat template. The held-out `test` split gives prompts with reference answers for a
  before/after generation demo; `score_ticket` grades a generated ticket field by field.
- **Ticket routing** (`write_classification_dataset`, task `classification`): the same kind of messages,
  answered with one label token such as `[[delivery]]` (see `CLASSIFICATION_LABEL_TOKENS`).
- **Support replies** (`write_preference_dataset`, task `preference_tuning`): the same customer messages,
  each with a reply in the house format (a greeting, numbered steps, the shop's sign-off) as the chosen
  answer and the same content as one plain sentence as the rejected one; `is_house_format` checks a
  generated reply for that format.
- **Knowledge-base articles** (`write_pretraining_dataset`, task `causal_lm`): short product care and
  policy articles as raw text in a single `user` message, for continued pre-training.

The same arguments always produce byte-identical files (`random.Random(seed)`, no hash ordering).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from forgekit.convert import write_jsonl

__all__ = [
    "CATEGORIES",
    "CLASSIFICATION_LABEL_TOKENS",
    "HOUSE_SIGN_OFF",
    "TICKET_FIELDS",
    "is_house_format",
    "make_ticket_example",
    "score_ticket",
    "split_prompt",
    "write_classification_dataset",
    "write_preference_dataset",
    "write_pretraining_dataset",
    "write_quickstart_dataset",
]

SHOP = "Northwind Outfitters"

CATEGORIES = ("delivery", "damaged", "refund", "billing", "account", "technical", "question")
CLASSIFICATION_LABEL_TOKENS = tuple(f"[[{c}]]" for c in CATEGORIES)
TICKET_FIELDS = ("category", "priority", "order_id", "product", "customer", "summary", "next_step")

REFUND_WINDOW_DAYS = 30
LATE_DELIVERY_DAYS = 10

_PRODUCTS = (
    "Trail Runner backpack", "Summit 2 tent", "AeroLite headlamp", "Nimbus sleeping bag", "Ridge trekking poles",
    "Cascade water filter", "Alpine down jacket", "Basecamp stove", "Drift kayak paddle", "Granite climbing harness",
    "Tundra insulated bottle", "Canyon hiking boots", "Breeze rain shell", "Pioneer camp chair", "Glacier gloves",
    "Harbor dry bag", "Meadow picnic blanket", "Falcon GPS watch", "Ember solar lantern", "Voyager duffel bag",
    "Pinecrest hammock", "Sierra fleece pullover", "Coastline wetsuit", "Boulder chalk bag", "Comet bike light",
)
# Products with a battery or a screen, used for technical problems.
_DEVICES = ("AeroLite headlamp", "Falcon GPS watch", "Ember solar lantern", "Comet bike light")
_NAMES = (
    "Priya", "Tom", "Ana", "Kenji", "Fatima", "Lukas", "Grace", "Mateo", "Olivia", "Sven", "Amara", "Diego",
    "Hannah", "Ravi", "Chloe", "Yusuf", "Ingrid", "Marco", "Leila", "Jonas", "Sofia", "Daniel", "Mei", "Omar",
    "Elena", "Noah", "Aisha", "Pavel", "Nora", "Felix",
)
_GREETINGS = ("Hi,", "Hello,", "Hi there,", "Good morning,", "Hey,", "Dear support team,", "")
_SIGNOFFS = ("Thanks, {name}", "Best, {name}", "Regards, {name}", "Cheers, {name}", "{name}", "- {name}")
_URGENT = (
    "This is urgent.", "I need this sorted today.", "Please treat this as urgent.", "ASAP please.",
    "I leave for a trip tomorrow, so this is urgent.",
)
_DAMAGE = (
    "a torn seam", "a cracked buckle", "a broken zipper", "a bent frame", "a hole in the fabric",
    "a snapped strap", "a dented lid", "a missing screw",
)
_TECH_PROBLEMS = (
    ("won't charge", "it does not charge"), ("won't turn on", "it will not switch on at all"),
    ("drains battery fast", "the battery is empty after an hour"), ("screen flickers", "the display keeps flickering"),
    ("won't pair with the app", "it never shows up in the app when I try to pair it"),
)
_ACCOUNT_PROBLEMS = (
    ("password reset email not arriving", "the password reset email never arrives"),
    ("account locked", "my account says it is locked"),
    ("cannot change email address", "I cannot change the email address on my account"),
    ("login code rejected", "the login code you text me is always rejected"),
)
_QUESTION_TOPICS = (
    ("weight", "how much does the {product} weigh"), ("warranty", "what warranty comes with the {product}"),
    ("sizing", "how does the {product} fit, should I size up"), ("washing", "can I machine wash the {product}"),
    ("stock", "when will the {product} be back in stock"),
)
_SYSTEM_MESSAGES = (
    f"You are the support desk assistant of {SHOP}. Turn each customer message into a ticket.",
    f"You work on the {SHOP} help desk. Reply with a ticket for the message.",
    "Convert the customer's message into a support ticket in the house format.",
    f"{SHOP} support triage. Output one ticket per message.",
)
_NEXT_STEP = {
    "delivery": "open a carrier trace",
    "damaged": "send a replacement and a prepaid return label",
    "billing": "refund the duplicate charge",
    "account": "send an account recovery link",
    "technical": "send the troubleshooting guide",
    "question": "answer from the product page",
}


def _order_id(rng: random.Random) -> str:
    return str(rng.randint(10000, 99999))


def _money(rng: random.Random) -> str:
    return f"{rng.randint(12, 480)}.{rng.choice(('00', '50', '99', '95'))}"


def _wrap(rng: random.Random, body: str, name: str | None, urgent: bool) -> str:
    """Add a greeting, an optional urgency sentence and a sign-off around the core request."""
    greeting = rng.choice(_GREETINGS)
    text = body + (" " + rng.choice(_URGENT) if urgent else "")
    if greeting:
        text = f"{greeting}\n{text}"
    if name:
        text += "\n" + rng.choice(_SIGNOFFS).format(name=name)
    return text


def make_ticket_example(rng: random.Random, category: str | None = None) -> tuple[str, dict[str, Any]]:
    """Draw one customer message and the ticket the house rules derive from it.

    Args:
        rng: the random source (determinism comes from its seed).
        category: one of `CATEGORIES`; drawn uniformly when None.

    Returns:
        (message text, ticket dict with the keys of `TICKET_FIELDS` in that order).
    """
    category = category or rng.choice(CATEGORIES)
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    name = rng.choice(_NAMES) if rng.random() < 0.8 else None
    urgent = rng.random() < 0.2
    product = rng.choice(_DEVICES if category == "technical" else _PRODUCTS)
    order = _order_id(rng) if category not in ("account", "question") or rng.random() < 0.3 else None
    high = False  # the category's own rule for "high" priority

    if category == "delivery":
        days = rng.randint(3, 21)
        high = days >= LATE_DELIVERY_DAYS
        body = rng.choice((
            "My order {order} ({product}) still hasn't arrived and it has been {days} days.",
            "I ordered the {product} {days} days ago, order number {order}, and nothing has shown up yet.",
            "Where is my {product}? Order {order} was placed {days} days ago and tracking has not moved.",
            "It's been {days} days since I ordered the {product} (#{order}). Can you check where it is?",
        )).format(order=order, product=product, days=days)
        summary = f"{product} (order {order}) not delivered after {days} days"
        next_step = _NEXT_STEP["delivery"]
    elif category == "damaged":
        damage = rng.choice(_DAMAGE)
        high = True
        body = rng.choice((
            "The {product} from order {order} arrived with {damage}.",
            "I just unpacked my {product} (order {order}) and it has {damage}. Not happy.",
            "Order #{order}: the {product} came with {damage}. What can you do?",
        )).format(order=order, product=product, damage=damage)
        summary = f"{product} (order {order}) arrived with {damage}"
        next_step = _NEXT_STEP["damaged"]
    elif category == "refund":
        days = rng.randint(2, 60)
        amount = _money(rng)
        body = rng.choice((
            "I'd like to return the {product} (order {order}) and get my ${amount} back. I bought it {days} days ago.",
            "Can I get a refund for the {product}? Order {order}, paid ${amount}, delivered {days} days ago.",
            "Please refund order {order}, the {product} (${amount}) was not what I expected. It came {days} days ago.",
        )).format(order=order, product=product, days=days, amount=amount)
        summary = f"refund of ${amount} for {product} (order {order}), bought {days} days ago"
        next_step = (
            "issue a refund after the item is returned" if days <= REFUND_WINDOW_DAYS
            else "offer store credit, the 30-day window has passed"
        )
    elif category == "billing":
        amount = _money(rng)
        high = True
        body = rng.choice((
            "I was charged twice for order {order}: two payments of ${amount} for the {product}.",
            "My card shows ${amount} taken two times for the {product}, order {order}.",
            "Double charge! Order {order} ({product}) billed ${amount} twice.",
        )).format(order=order, product=product, amount=amount)
        summary = f"charged twice ${amount} for {product} (order {order})"
        next_step = _NEXT_STEP["billing"]
    elif category == "account":
        short, long = rng.choice(_ACCOUNT_PROBLEMS)
        body = rng.choice((
            "I can't get into my account: {long}.",
            "Help with my account please, {long}.",
            "Since yesterday {long}. I have tried three times.",
        )).format(long=long)
        if order:
            body += f" My last order was {order}."
        product = None
        summary = f"account problem: {short}"
        next_step = _NEXT_STEP["account"]
    elif category == "technical":
        short, long = rng.choice(_TECH_PROBLEMS)
        body = rng.choice((
            "My {product} {short}. I bought it with order {order}.",
            "Problem with the {product} (order {order}): {long}.",
            "The {product} I got in order {order} is faulty, {long}.",
        )).format(product=product, short=short, long=long, order=order)
        summary = f"{product} {short}"
        next_step = _NEXT_STEP["technical"]
    else:  # question
        topic, text = rng.choice(_QUESTION_TOPICS)
        body = rng.choice(("Quick question: {q}?", "Before I buy: {q}?", "Could you tell me {q}?")).format(
            q=text.format(product=product)
        )
        if order:
            body += f" I already have order {order} with you."
        summary = f"question about {topic} of the {product}"
        next_step = _NEXT_STEP["question"]

    if urgent:
        priority = "urgent"
    elif high:
        priority = "high"
    elif category == "question":
        priority = "low"
    else:
        priority = "normal"
    ticket = {
        "category": category,
        "priority": priority,
        "order_id": order,
        "product": product,
        "customer": name,
        "summary": summary,
        "next_step": next_step,
    }
    return _wrap(rng, body, name, urgent), ticket


def _format_ticket(ticket: dict[str, Any]) -> str:
    return json.dumps(ticket, ensure_ascii=False)


def _unique(rng: random.Random, count: int, draw) -> list:
    """`count` draws whose first element (the user text) is unique, in draw order."""
    seen: set[str] = set()
    out = []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 50 * count + 1000:
            raise ValueError(f"cannot draw {count} distinct examples from the templates; ask for fewer")
        item = draw(rng)
        if item[0] in seen:
            continue
        seen.add(item[0])
        out.append(item)
    return out


def _check_counts(**counts: int) -> None:
    bad = [f"{k}={v!r}" for k, v in counts.items() if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    if bad:
        raise ValueError(f"example counts must be non-negative integers, got {', '.join(bad)}")
    if counts.get("n_train", 1) < 1:
        raise ValueError("n_train must be at least 1")


def _write_splits(out_dir: str | Path, splits: dict[str, list[dict]]) -> dict[str, str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in splits.items():
        path = out / f"{split}.jsonl"
        write_jsonl(rows, path)
        paths[split] = str(path)
    return paths


def _split(items: list, n_train: int, n_valid: int) -> tuple[list, list, list]:
    return items[:n_train], items[n_train : n_train + n_valid], items[n_train + n_valid :]


def write_quickstart_dataset(
    out_dir: str | Path,
    n_train: int = 400,
    n_valid: int = 40,
    n_test: int = 20,
    seed: int = 0,
    system_share: float = 0.4,
) -> dict[str, str]:
    """Write the support-ticket dataset (instruction tuning) as train/valid/test chat JSONL.

    Every user message is distinct across all three splits. A share of the examples opens with one of a few
    system messages; the others have none (a chat template may then add its own default).

    Args:
        out_dir: folder to write `train.jsonl`, `valid.jsonl` and `test.jsonl` into (created if missing).
        n_train: training examples.
        n_valid: validation examples (used for eval loss).
        n_test: held-out examples with reference answers, for generation demos (`split_prompt`).
        seed: random seed; the same arguments give byte-identical files.
        system_share: fraction of examples (0..1) that carry a system message.

    Returns:
        {"train": path, "valid": path, "test": path} as strings.
    """
    _check_counts(n_train=n_train, n_valid=n_valid, n_test=n_test)
    if not 0.0 <= system_share <= 1.0:
        raise ValueError(f"system_share must be between 0 and 1, got {system_share!r}")
    rng = random.Random(seed)

    def draw(r: random.Random) -> tuple[str, list[dict]]:
        text, ticket = make_ticket_example(r)
        messages = []
        if r.random() < system_share:
            messages.append({"role": "system", "content": r.choice(_SYSTEM_MESSAGES)})
        messages.append({"role": "user", "content": text})
        messages.append({"role": "assistant", "content": _format_ticket(ticket)})
        return text, messages

    rows = [{"messages": m} for _, m in _unique(rng, n_train + n_valid + n_test, draw)]
    train, valid, test = _split(rows, n_train, n_valid)
    return _write_splits(out_dir, {"train": train, "valid": valid, "test": test})


def write_classification_dataset(
    out_dir: str | Path,
    n_train: int = 280,
    n_valid: int = 70,
    seed: int = 0,
) -> dict[str, str]:
    """Write the ticket-routing dataset (task `classification`) as train/valid chat JSONL.

    The user message is a customer message; the assistant answers with exactly one label token from
    `CLASSIFICATION_LABEL_TOKENS` (its category). Categories are balanced by cycling through them in a
    shuffled order.

    Args:
        out_dir: folder to write `train.jsonl` and `valid.jsonl` into.
        n_train: training examples.
        n_valid: validation examples (eval loss and accuracy).
        seed: random seed; the same arguments give byte-identical files.

    Returns:
        {"train": path, "valid": path} as strings.
    """
    _check_counts(n_train=n_train, n_valid=n_valid)
    rng = random.Random(seed)
    instruction = "Route this message to a team. Answer with the category only.\n\n"
    counter = iter(range(10**9))

    def draw(r: random.Random) -> tuple[str, list[dict]]:
        category = CATEGORIES[next(counter) % len(CATEGORIES)]
        text, _ = make_ticket_example(r, category)
        messages = [
            {"role": "user", "content": instruction + text},
            {"role": "assistant", "content": f"[[{category}]]"},
        ]
        return text, messages

    pairs = _unique(rng, n_train + n_valid, draw)
    rng.shuffle(pairs)
    rows = [{"messages": m} for _, m in pairs]
    train, valid, _ = _split(rows, n_train, n_valid)
    return _write_splits(out_dir, {"train": train, "valid": valid})


HOUSE_SIGN_OFF = f"Best regards,\n{SHOP} Support"
_REPLY_SYSTEM = f"You are the support desk assistant of {SHOP}. Reply to the customer."
_FOLLOW_UP = {"urgent": "today", "high": "within 1 working day", "normal": "within 2 working days",
              "low": "within 3 working days"}


def _replies(ticket: dict[str, Any]) -> tuple[str, str]:
    """(house-format reply, plain one-sentence reply) with the same content: the next step and when to expect it."""
    when = _FOLLOW_UP[ticket["priority"]]
    ref = f" for order {ticket['order_id']}" if ticket["order_id"] else ""
    steps = [f"We will {ticket['next_step']}{ref}.", f"You will hear from us {when}.",
             "Reply to this email if anything changes."]
    greeting = f"Hi {ticket['customer']}," if ticket["customer"] else "Hello,"
    house = "\n".join([greeting, *(f"{i}. {s}" for i, s in enumerate(steps, 1)), HOUSE_SIGN_OFF])
    plain = f"We will {ticket['next_step']}{ref} and you will hear from us {when}."
    return house, plain


def is_house_format(reply: str) -> bool:
    """True when a reply follows the support house format: numbered steps 1. and 2. on their own lines, in that
    order, and `HOUSE_SIGN_OFF` at the end."""
    lines = [line.strip() for line in reply.strip().splitlines()]
    numbered = [line.split(".", 1)[0] for line in lines if re.match(r"^\d+\. \S", line)]
    return numbered[:2] == ["1", "2"] and "\n".join(lines).endswith(HOUSE_SIGN_OFF)


def write_preference_dataset(
    out_dir: str | Path,
    n_train: int = 200,
    n_valid: int = 40,
    n_test: int = 20,
    seed: int = 0,
) -> dict[str, str]:
    """Write the support-reply preference set (task `preference_tuning`) and its SFT view.

    Every prompt is a system message and a distinct customer message (the support-ticket generator's); the
    chosen reply follows the house format (greeting, numbered steps, `HOUSE_SIGN_OFF`), the rejected one says
    the same in one plain sentence. Files written:

    - `train.jsonl`, `valid.jsonl`: TRL conversational pairs `{"prompt", "chosen", "rejected"}`.
    - `sft_train.jsonl`, `sft_valid.jsonl`: the same prompts with the chosen reply, as `{"messages": [...]}`.
    - `test.jsonl`: held-out prompts with the chosen reply as reference (`split_prompt`), for generations.

    Args:
        out_dir: folder to write into (created if missing).
        n_train: training pairs (and SFT examples).
        n_valid: validation pairs (held-out reward accuracy) and SFT validation examples.
        n_test: held-out prompts for generation.
        seed: random seed; the same arguments give byte-identical files.

    Returns:
        {"train", "valid", "sft_train", "sft_valid", "test"} → path strings.
    """
    _check_counts(n_train=n_train, n_valid=n_valid, n_test=n_test)
    rng = random.Random(seed)

    def draw(r: random.Random) -> tuple[str, dict]:
        text, ticket = make_ticket_example(r)
        house, plain = _replies(ticket)
        prompt = [{"role": "system", "content": _REPLY_SYSTEM}, {"role": "user", "content": text}]
        return text, {"prompt": prompt, "chosen": [{"role": "assistant", "content": house}],
                      "rejected": [{"role": "assistant", "content": plain}]}

    pairs = [p for _, p in _unique(rng, n_train + n_valid + n_test, draw)]
    train, valid, test = _split(pairs, n_train, n_valid)

    def sft(rows: list[dict]) -> list[dict]:
        return [{"messages": p["prompt"] + p["chosen"]} for p in rows]

    return _write_splits(out_dir, {"train": train, "valid": valid, "sft_train": sft(train), "sft_valid": sft(valid),
                                   "test": sft(test)})


_ARTICLE_KINDS = ("care", "specs", "policy", "trip")


def _article(rng: random.Random) -> str:
    """One knowledge-base article of a few sentences."""
    kind = rng.choice(_ARTICLE_KINDS)
    product = rng.choice(_PRODUCTS)
    if kind == "care":
        temp = rng.choice((20, 30, 40))
        dry = rng.choice(("air dry in the shade", "tumble dry on low heat", "hang it to dry away from a fire"))
        store = rng.choice(("loosely in a cotton sack", "uncompressed in a dry cupboard", "clean and fully dry"))
        return (
            f"Caring for your {product}. Wash the {product} by hand or on a gentle cycle at {temp} degrees "
            f"with a mild soap. Rinse well, then {dry}. Never use bleach or fabric softener. "
            f"Between trips, store it {store}. A well cared for {product} lasts for many seasons."
        )
    if kind == "specs":
        weight = rng.randint(80, 4200)
        warranty = rng.choice((1, 2, 3, 5))
        made = rng.choice(("recycled nylon", "aluminium", "merino wool", "ripstop polyester", "stainless steel"))
        return (
            f"{product} at a glance. The {product} weighs {weight} grams and is made of {made}. "
            f"It comes with a {warranty}-year warranty from {SHOP}. "
            f"Register your {product} online to extend the warranty by one year."
        )
    if kind == "policy":
        days = REFUND_WINDOW_DAYS
        ship = rng.choice((3, 4, 5))
        return (
            f"Returns and refunds at {SHOP}. Unused items can be returned within {days} days of delivery "
            f"for a full refund. After {days} days we offer store credit instead. Standard delivery takes "
            f"{ship} to {ship + 3} working days; if an order has not arrived after {LATE_DELIVERY_DAYS} days, "
            f"contact support and we will open a carrier trace. Damaged items are replaced free of charge."
        )
    place = rng.choice(("in the Alps", "in the Rockies", "on a coastal trail", "at a forest camp", "in the high desert"))
    nights = rng.randint(2, 7)
    second = rng.choice(_PRODUCTS)
    return (
        f"Packing list for {nights} nights {place}. Bring the {product} and the {second}, plenty of water "
        f"and a warm layer for the evening. Check the weather forecast the day before you leave, and tell "
        f"someone where you are going. Leave no trace: pack out everything you pack in."
    )


def write_pretraining_dataset(
    out_dir: str | Path,
    n_train: int = 200,
    n_valid: int = 20,
    seed: int = 0,
) -> dict[str, str]:
    """Write knowledge-base articles as raw text for continued pre-training (task `causal_lm`).

    Each line is `{"messages": [{"role": "user", "content": <article>}]}`, the LLMForge layout for raw
    text; use it with a pass-through prompt format so that only the text itself is trained.

    Args:
        out_dir: folder to write `train.jsonl` and `valid.jsonl` into.
        n_train: training articles.
        n_valid: validation articles.
        seed: random seed; the same arguments give byte-identical files.

    Returns:
        {"train": path, "valid": path} as strings.
    """
    _check_counts(n_train=n_train, n_valid=n_valid)
    rng = random.Random(seed)

    def draw(r: random.Random) -> tuple[str]:
        return (_article(r),)

    texts = [t for (t,) in _unique(rng, n_train + n_valid, draw)]
    rows = [{"messages": [{"role": "user", "content": t}]} for t in texts]
    train, valid, _ = _split(rows, n_train, n_valid)
    return _write_splits(out_dir, {"train": train, "valid": valid})


def split_prompt(example: dict) -> tuple[list[dict], str]:
    """Split a conversation into its prompt (every message before the last) and the last assistant answer.

    Args:
        example: a row `{"messages": [...]}` whose last message is from the assistant.

    Returns:
        (prompt messages, reference answer text).
    """
    messages = example.get("messages") if isinstance(example, dict) else None
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("expected {'messages': [...]} ending with an assistant message")
    return list(messages[:-1]), messages[-1]["content"]


def score_ticket(prediction: str, reference: str) -> dict[str, Any]:
    """Grade a generated ticket against the reference, field by field.

    Args:
        prediction: the model's answer (a ticket is expected as one JSON object; text around it is ignored).
        reference: the reference answer from the dataset.

    Returns:
        {"valid_json": bool, "fields_correct": int, "fields_total": int, "exact_match": bool}.
    """
    ref = json.loads(reference)
    pred = None
    start, end = prediction.find("{"), prediction.rfind("}")
    if start != -1 and end > start:
        try:
            pred = json.loads(prediction[start : end + 1])
        except json.JSONDecodeError:
            pred = None
    if not isinstance(pred, dict):
        return {"valid_json": False, "fields_correct": 0, "fields_total": len(ref), "exact_match": False}
    correct = sum(1 for k, v in ref.items() if k in pred and pred[k] == v)
    return {
        "valid_json": True,
        "fields_correct": correct,
        "fields_total": len(ref),
        "exact_match": pred == ref,
    }
