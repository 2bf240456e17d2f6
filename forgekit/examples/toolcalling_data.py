"""A seeded synthetic tool-calling dataset in the OpenAI format: 41 tools, four conversation kinds, held-out test.

Every record is `{"messages": [...], "tools": [...], "metadata": {...}}` with OpenAI function specs in `tools`,
assistant `tool_calls` (arguments as JSON text), `tool` results and natural-language answers. Kinds:

* `single`: one request → one call (in train and valid, half the time followed by its result and an answer);
* `parallel`: two or three requests in one message → that many calls in one assistant turn (up-weighted in
  train and valid: `TRAIN_MIX`, `THREE_CALL_SHARE`; their requests joined by more and other joiners than the
  test's, `TRAIN_JOINERS`);
* `multi_turn`: request → call → result → answer, then a follow-up ("What about Oslo?", a new request, or
  thanks) → call (→ result → answer in train and valid), or just an answer;
* `no_call`: tools are offered but none applies (general questions, small talk, or a request for a
  capability none of the offered tools has): the assistant answers in text and must not call.

The tools cover 16 domains and every JSON-schema argument type the evaluator must handle: strings, enums
(some named indirectly: "by bike" → `"cycling"`), integers (some written as words), numbers, booleans, arrays
of strings, nested objects, arrays of objects and optional parameters. Each conversation offers its tools
among distractors (2 or 3 in all, more for some parallel calls; in random order). Dates are sometimes written as "March 4, 2026" and
must be passed as `2026-03-04`.

Test conversations end at their last call: every test turn is then a decision (call or not, which function,
which arguments) except the answer after the first result of multi-turn ones, which checks that the model
answers a result instead of calling again.

Generalisation, not recall: 8 of the 41 tools (`HELD_OUT_TOOLS`) and a share of each tool's phrasings, the
follow-ups and the general questions appear only in the test split. `metadata.held_out` says whether a test
conversation uses a held-out tool. Same arguments → byte-identical files (`random.Random` seeded per split).
"""

from __future__ import annotations

import ast
import json
import operator
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forgekit.convert import write_jsonl

__all__ = [
    "DEFAULT_MIX",
    "HELD_OUT_TOOLS",
    "KINDS",
    "TOOLS",
    "TRAIN_MIX",
    "ToolDef",
    "make_conversation",
    "write_tool_calling_dataset",
]

KINDS = ("single", "parallel", "multi_turn", "no_call")
DEFAULT_MIX = {"single": 0.3, "parallel": 0.15, "multi_turn": 0.2, "no_call": 0.35}  # the test split's mix
# Train and valid up-weight parallel calls: with DEFAULT_MIX, 135 of 900 training conversations are parallel
# and only 18.5% of the training call turns go on after their first call, so a tuned model learns to stop
# there (it wrote one call for 22 of the 30 parallel test requests and scored 0 of 30).
TRAIN_MIX = {"single": 0.2, "parallel": 0.3, "multi_turn": 0.15, "no_call": 0.35}
THREE_CALL_SHARE = {"train": 0.3, "valid": 0.3, "test": 0.15}  # parallel requests asking for three calls

# ---------------------------------------------------------------------------------------------- schemas


def S(desc: str | None = None) -> dict:
    return {"type": "string", **({"description": desc} if desc else {})}


def E(*values: str) -> dict:
    return {"type": "string", "enum": list(values)}


def I(desc: str | None = None) -> dict:
    return {"type": "integer", **({"description": desc} if desc else {})}


def N(desc: str | None = None) -> dict:
    return {"type": "number", **({"description": desc} if desc else {})}


def B() -> dict:
    return {"type": "boolean"}


def A(items: dict) -> dict:
    return {"type": "array", "items": items}


def O(props: dict, required: tuple[str, ...]) -> dict:
    return {"type": "object", "properties": props, "required": list(required)}


DATE = S("YYYY-MM-DD")
TIME = S("HH:MM")
ADDRESS = O({"street": S(), "city": S(), "postal_code": S()}, ("street", "city", "postal_code"))
SHIP_ADDRESS = O({"street": S(), "city": S(), "postal_code": S(), "country": S()}, ("street", "city", "postal_code"))

# ------------------------------------------------------------------------------------------ value pools

CITIES = (
    "Paris", "Berlin", "Tokyo", "Lisbon", "Nairobi", "Toronto", "Sydney", "Seoul", "Cairo", "Lima", "Oslo",
    "Madrid", "Chicago", "Mumbai", "Dublin", "Prague", "Austin", "Denver", "Vienna", "Bogota", "Hanoi",
    "Athens", "Boston", "Helsinki", "Manila", "Zurich", "Cape Town", "Vancouver", "Rome", "Istanbul",
)
AIRPORTS = ("JFK", "LAX", "SFO", "LHR", "CDG", "FRA", "NRT", "SYD", "DXB", "ORD", "SEA", "BOS", "MAD", "AMS",
            "YYZ", "SIN", "ATL", "MEX", "GRU", "ICN")
NAMES = ("Maria", "John", "Aisha", "Kenji", "Lena", "Omar", "Sofia", "Ravi", "Chen", "Emma", "Lucas", "Nia",
         "Diego", "Hana", "Tom", "Priya", "Ivan", "Grace", "Mateo", "Zara")
SURNAMES = ("Garcia", "Smith", "Khan", "Tanaka", "Muller", "Haddad", "Rossi", "Patel", "Wang", "Brown",
            "Silva", "Okafor", "Lopez", "Kim", "Novak", "Jensen")
DOMAINS = ("example.com", "mail.org", "work.io", "studio.net")
CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "INR", "SEK", "MXN")
SYMBOLS = ("AAPL", "MSFT", "TSLA", "AMZN", "NVDA", "GOOGL", "IBM", "KO", "NFLX", "INTC", "ORCL", "SAP")
CUISINES = ("Thai", "Italian", "Mexican", "Japanese", "Indian", "Greek", "Korean", "Ethiopian", "French",
            "Lebanese", "vegan", "seafood")
INGREDIENTS = ("chicken", "rice", "garlic", "tomatoes", "spinach", "eggs", "mushrooms", "tofu", "basil",
               "potatoes", "lentils", "salmon", "onions", "peppers", "cheese", "beans")
PLACES = ("Central Station", "the airport", "Union Square", "12 Oak Avenue", "the Grand Hotel", "City Hospital",
          "Riverside Park", "45 King Street", "the convention center", "Pier 39", "my office", "the museum")
STREETS = ("Baker Street", "Elm Street", "Maple Avenue", "High Street", "Sunset Boulevard", "Rue Cler",
           "Harbour Road", "Park Lane", "Queen Street", "Mill Road")
POSTAL = ("NW1 6XE", "80202", "75007", "10115", "2000", "M5V 2T6", "94103", "1010", "00100", "60601")
COUNTRIES = ("USA", "France", "Germany", "Canada", "Australia", "UK", "Japan", "Kenya")
EVENT_TITLES = ("Team sync", "Dentist appointment", "Project kickoff", "Lunch with Sam", "Budget review",
                "Yoga class", "Parent-teacher meeting", "Quarterly planning", "Coffee with Ana", "Design review")
REMINDERS = ("call mom", "water the plants", "take my medicine", "pay the rent", "submit the report",
             "book a haircut", "buy milk", "renew my passport", "feed the cat", "back up my laptop")
TASKS = ("clean the garage", "prepare slides", "fix the bike", "write the newsletter", "file taxes",
         "order new glasses", "plan the trip", "update my resume", "return library books", "call the plumber")
TAGS = ("home", "work", "urgent", "errands", "finance", "health", "family", "weekend")
SUBJECTS = ("Meeting tomorrow", "Invoice question", "Weekend plans", "Project update", "Quick favor",
            "Lunch on Friday", "Contract draft", "Travel itinerary")
BODIES = ("I'm running late", "The files are ready", "Can we move the call to Monday", "Thanks for your help",
          "Dinner is at seven", "Please review the draft", "The package arrived", "See you at the station")
PRODUCTS = ("wireless earbuds", "running shoes", "a yoga mat", "a coffee grinder", "LED desk lamps",
            "a backpack", "hiking socks", "a phone charger", "noise-cancelling headphones", "a water bottle")
SONGS = ("jazz", "Bohemian Rhapsody", "lo-fi beats", "Taylor Swift", "classical piano", "80s rock",
         "Miles Davis", "my workout playlist", "Beethoven's Fifth", "reggae")
MOVIES = ("Dune: Part Two", "Inside Out 2", "Oppenheimer", "The Wild Robot", "Past Lives", "Wicked",
          "Gladiator II", "Barbie")
TEAMS = {"NBA": ("Lakers", "Celtics", "Warriors", "Bulls"), "NFL": ("Packers", "Chiefs", "Eagles", "Cowboys"),
         "MLB": ("Yankees", "Dodgers", "Cubs", "Red Sox"), "NHL": ("Bruins", "Rangers", "Oilers", "Canadiens")}
TOPICS = ("climate change", "electric cars", "the stock market", "space exploration", "artificial intelligence",
          "the Olympics", "renewable energy", "public health", "housing prices", "the elections")
LANGUAGES = ("Spanish", "French", "German", "Italian")
PHRASES = {
    "good morning": {"Spanish": "buenos días", "French": "bonjour", "German": "guten Morgen", "Italian": "buongiorno"},
    "thank you very much": {"Spanish": "muchas gracias", "French": "merci beaucoup", "German": "vielen Dank",
                            "Italian": "grazie mille"},
    "where is the station": {"Spanish": "dónde está la estación", "French": "où est la gare",
                             "German": "wo ist der Bahnhof", "Italian": "dov'è la stazione"},
    "I would like a coffee": {"Spanish": "quisiera un café", "French": "je voudrais un café",
                              "German": "ich möchte einen Kaffee", "Italian": "vorrei un caffè"},
    "see you tomorrow": {"Spanish": "hasta mañana", "French": "à demain", "German": "bis morgen",
                         "Italian": "a domani"},
}
WORDS = {"ephemeral": "lasting a very short time", "ubiquitous": "found everywhere",
         "serendipity": "a happy accident", "laconic": "using very few words", "candid": "truthful and direct",
         "meticulous": "very careful about details", "resilient": "able to recover quickly"}
UNIT_PAIRS = (("km", "miles", 0.6214), ("miles", "km", 1.609), ("kg", "pounds", 2.2046), ("pounds", "kg", 0.4536),
              ("liters", "gallons", 0.2642), ("inches", "cm", 2.54), ("meters", "feet", 3.2808))
ACTIVITIES = ("running", "cycling", "swimming", "yoga", "walking")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# -------------------------------------------------------------------------------------- value samplers

Value = tuple[Any, str]  # (argument value, how the user writes it)


def _date(r: random.Random) -> Value:
    y, m, d = r.choice((2025, 2026)), r.randint(1, 12), r.randint(1, 28)
    iso = f"{y}-{m:02d}-{d:02d}"
    return iso, (f"{MONTHS[m - 1]} {d}, {y}" if r.random() < 0.2 else iso)


def _time(r: random.Random) -> Value:
    t = f"{r.randint(7, 21):02d}:{r.choice(('00', '15', '30', '45'))}"
    return t, t


def _small(r: random.Random, lo: int, hi: int) -> Value:
    n = r.randint(lo, hi)
    return n, (NUMBER_WORDS[n] if n < len(NUMBER_WORDS) and r.random() < 0.25 else str(n))


def _money(r: random.Random, lo: int, hi: int) -> Value:
    x = r.randint(lo, hi) if r.random() < 0.5 else round(r.uniform(lo, hi), 2)
    return x, f"{x:.2f}" if isinstance(x, float) else str(x)


def _email(r: random.Random) -> str:
    return f"{r.choice(NAMES).lower()}.{r.choice(SURNAMES).lower()}@{r.choice(DOMAINS)}"


def _listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _address(r: random.Random, country: bool = False) -> Value:
    addr = {"street": f"{r.randint(1, 250)} {r.choice(STREETS)}", "city": r.choice(CITIES),
            "postal_code": r.choice(POSTAL)}
    text = f"{addr['street']}, {addr['city']} {addr['postal_code']}"
    if country and r.random() < 0.5:
        addr["country"] = r.choice(COUNTRIES)
        text += f", {addr['country']}"
    return addr, text


def _pick(r: random.Random, options: tuple | dict) -> Value:
    """An enum value and its wording: `options` is a tuple of values or {value: (wordings...)}."""
    if isinstance(options, dict):
        value = r.choice(list(options))
        return value, r.choice(options[value])
    value = r.choice(options)
    return value, value


def _flag(r: random.Random, yes: tuple[str, ...], no: tuple[str, ...] = ()) -> Value:
    if no and r.random() < 0.3:
        return False, r.choice(no)
    return True, r.choice(yes)


def _code(r: random.Random, letters: int, digits: int) -> str:
    return "".join(r.choices(string.ascii_uppercase, k=letters)) + "".join(r.choices(string.digits, k=digits))


# ------------------------------------------------------------------------------------------- the tools

Phrasing = str | tuple[str, dict]  # a template, or (template, fixed arguments it implies)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class ToolDef:
    """One tool of the catalog: its spec, how users ask for it, and what it returns.

    Attributes:
        name: function name.
        domain: topic; a no-call request for an absent capability never comes from an offered tool's domain.
        description: spec description.
        capability: "check the weather": completes "Sorry, I can't ..." when the tool is not offered.
        params: JSON schema per parameter, in signature order.
        required: required parameters; every phrasing mentions them all.
        sample: r → {parameter: (value, wording)} for every parameter.
        phrasings: templates with `{parameter}` slots (train and valid); the arguments of a call are the
            slots a template mentions, plus the fixed arguments of `(template, fixed)` pairs.
        test_phrasings: templates used only in the test split.
        result: (arguments, r) → the tool's JSON result.
        answer: template over arguments and result for the answer after the result.
        followup: the parameter a "What about X?" follow-up swaps (None: no such follow-up).
        self_answerable: the assistant could answer without the tool (never used as an absent capability).
    """

    name: str
    domain: str
    description: str
    capability: str
    params: dict[str, dict]
    required: tuple[str, ...]
    sample: Callable[[random.Random], dict[str, Value]]
    phrasings: tuple[Phrasing, ...]
    test_phrasings: tuple[Phrasing, ...]
    result: Callable[[dict, random.Random], dict]
    answer: str
    followup: str | None = None
    self_answerable: bool = False
    held_out: bool = field(default=False)

    def spec(self) -> dict:
        """The OpenAI tool spec."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": {"type": "object", "properties": self.params, "required": list(self.required)}}}


def _cond(r: random.Random) -> str:
    return r.choice(("sunny", "cloudy", "rainy", "windy", "snowy", "foggy", "clear"))


_CATALOG: list[ToolDef] = [
    ToolDef(
        "get_weather", "weather", "Current weather for a city", "check the weather",
        {"city": S(), "unit": E("celsius", "fahrenheit")}, ("city",),
        lambda r: {"city": _pick(r, CITIES),
                   "unit": _pick(r, {"celsius": ("Celsius", "°C"), "fahrenheit": ("Fahrenheit", "°F")})},
        ("What's the weather like in {city}?", "How's the weather in {city} right now?", "Is it cold in {city} today?",
         "Tell me the current weather in {city} in {unit}.", "Current conditions for {city}, please, in {unit}."),
        ("I'm heading out in {city} - what's it like outside?", "Give me the temperature in {city} in {unit}."),
        lambda a, r: {"temperature": r.randint(-5, 35), "condition": _cond(r)},
        "It's {temperature} degrees and {condition} in {city}.", followup="city",
    ),
    ToolDef(
        "get_forecast", "weather", "Weather forecast for the coming days", "get a weather forecast",
        {"city": S(), "days": I("1-7"), "unit": E("celsius", "fahrenheit")}, ("city", "days"),
        lambda r: {"city": _pick(r, CITIES), "days": _small(r, 2, 7),
                   "unit": _pick(r, {"celsius": ("Celsius",), "fahrenheit": ("Fahrenheit",)})},
        ("What's the forecast for {city} for the next {days} days?", "Give me a {days} day forecast for {city}.",
         "Will it rain in {city} over the next {days} days?", "Forecast for {city}, {days} days, in {unit}."),
        ("How will the weather in {city} look over the coming {days} days?",
         "Plan my week: the forecast for {city}, {days} days ahead, in {unit}."),
        lambda a, r: {"summary": f"{_cond(r)} then {_cond(r)}", "high": r.randint(5, 35)},
        "Forecast for {city}: {summary}, highs around {high} degrees.", followup="city",
    ),
    ToolDef(
        "get_air_quality", "weather", "Air quality index for a city", "check air quality",
        {"city": S()}, ("city",), lambda r: {"city": _pick(r, CITIES)},
        (),
        ("How clean is the air in {city} today?", "What's the air quality index in {city}?",
         "Is the air in {city} safe for a run right now?"),
        lambda a, r: {"aqi": r.randint(10, 180), "level": r.choice(("good", "moderate", "unhealthy"))},
        "The air quality index in {city} is {aqi} ({level}).", followup="city", held_out=True,
    ),
    ToolDef(
        "get_time", "time", "Local time in a city", "look up the local time",
        {"city": S()}, ("city",), lambda r: {"city": _pick(r, CITIES)},
        ("What time is it in {city}?", "Current local time in {city}?", "Tell me the time in {city}."),
        ("Is it late in {city} right now? What's the time there?",),
        lambda a, r: {"time": _time(r)[0]}, "It's {time} in {city}.", followup="city",
    ),
    ToolDef(
        "convert_currency", "finance", "Convert money between currencies", "convert currencies",
        {"amount": N(), "from_currency": S("ISO code"), "to_currency": S("ISO code")},
        ("amount", "from_currency", "to_currency"),
        lambda r: dict(zip(("amount", "from_currency", "to_currency"),
                           (_money(r, 5, 5000), *[(c, c) for c in r.sample(CURRENCIES, 2)]))),
        ("Convert {amount} {from_currency} to {to_currency}.", "How much is {amount} {from_currency} in {to_currency}?",
         "I need {amount} {from_currency} changed into {to_currency}.",
         "What's {amount} {from_currency} worth in {to_currency}?"),
        ("If I exchange {amount} {from_currency}, how many {to_currency} do I get?",
         "{amount} {from_currency} to {to_currency}, please."),
        lambda a, r: {"converted": round(a["amount"] * r.uniform(0.5, 1.5), 2)},
        "{amount} {from_currency} is {converted} {to_currency}.", followup="to_currency",
    ),
    ToolDef(
        "get_stock_price", "finance", "Latest stock price", "look up stock prices",
        {"symbol": S("ticker"), "exchange": E("NASDAQ", "NYSE", "LSE")}, ("symbol",),
        lambda r: {"symbol": _pick(r, SYMBOLS), "exchange": _pick(r, ("NASDAQ", "NYSE", "LSE"))},
        ("What's {symbol} trading at?", "Get me the stock price of {symbol}.",
         "How is {symbol} doing on the {exchange} today?", "Share price for {symbol} on {exchange}?"),
        ("Quote for {symbol}, please.", "Check the latest {symbol} price on the {exchange}."),
        lambda a, r: {"price": round(r.uniform(20, 900), 2), "change_percent": round(r.uniform(-4, 4), 1)},
        "{symbol} is at {price} ({change_percent}% today).", followup="symbol",
    ),
    ToolDef(
        "calculate_loan_payment", "finance", "Monthly payment of a loan", "calculate loan payments",
        {"principal": N(), "annual_rate": N("percent"), "years": I()}, ("principal", "annual_rate", "years"),
        lambda r: {"principal": _money(r, 5000, 400000), "annual_rate": (x := round(r.uniform(2, 9), 1), str(x)),
                   "years": _small(r, 3, 30)},
        ("What would my monthly payment be on a {principal} loan at {annual_rate}% for {years} years?",
         "Calculate the payment for borrowing {principal} over {years} years at {annual_rate} percent.",
         "Loan of {principal}, {annual_rate}% interest, {years} years: monthly payment?"),
        ("I'm taking a {years} year mortgage of {principal} at {annual_rate}%. How much per month?",),
        lambda a, r: {"monthly_payment": round(r.uniform(100, 3000), 2)},
        "The monthly payment would be {monthly_payment}.",
    ),
    ToolDef(
        "split_bill", "finance", "Split a bill between people", "split bills",
        {"total": N(), "people": I(), "tip_percent": N()}, ("total", "people"),
        lambda r: {"total": _money(r, 20, 600), "people": _small(r, 2, 9), "tip_percent": _pick(r, (10, 15, 18, 20))},
        (),
        ("Split a {total} dinner bill between {people} people.",
         "We owe {total} in total and there are {people} of us, plus a {tip_percent}% tip. How much each?",
         "Divide {total} among {people} friends, adding a {tip_percent} percent tip."),
        lambda a, r: {"per_person": round(a["total"] / a["people"], 2)}, "Each person pays {per_person}.",
        held_out=True,
    ),
    ToolDef(
        "search_flights", "travel", "Search flights between airports", "search for flights",
        {"origin": S("IATA code"), "destination": S("IATA code"), "date": DATE, "passengers": I(),
         "cabin": E("economy", "business", "first"), "nonstop": B()},
        ("origin", "destination", "date"),
        lambda r: {**dict(zip(("origin", "destination"), [(c, c) for c in r.sample(AIRPORTS, 2)])),
                   "date": _date(r), "passengers": _small(r, 1, 6), "cabin": _pick(r, ("economy", "business", "first")),
                   "nonstop": _flag(r, ("nonstop", "direct"))},
        ("Find flights from {origin} to {destination} on {date}.",
         "I need a flight {origin} to {destination} on {date} for {passengers} people.",
         "Search {cabin} class flights from {origin} to {destination} on {date}.",
         "Any {nonstop} flights from {origin} to {destination} on {date}?",
         "Look up flights {origin} to {destination} on {date}, {passengers} passengers, {cabin} class."),
        ("Show me {cabin} seats from {origin} to {destination} departing {date}.",
         "Flights {origin} to {destination}, {date}, {nonstop} only."),
        lambda a, r: {"cheapest_flight": _code(r, 2, 3), "price": r.randint(90, 1800)},
        "The cheapest option is {cheapest_flight} at {price}.", followup="destination",
    ),
    ToolDef(
        "check_flight_status", "travel", "Status of a flight", "check flight status",
        {"flight_number": S(), "date": DATE}, ("flight_number",),
        lambda r: {"flight_number": (c := _code(r, 2, 3), c), "date": _date(r)},
        (),
        ("Is flight {flight_number} on time?", "What's the status of {flight_number} on {date}?",
         "Has {flight_number} departed yet?"),
        lambda a, r: {"status": r.choice(("on time", "delayed 25 minutes", "boarding", "landed"))},
        "Flight {flight_number} is {status}.", followup="flight_number", held_out=True,
    ),
    ToolDef(
        "book_hotel", "travel", "Book a hotel room", "book hotels",
        {"city": S(), "check_in": DATE, "nights": I(), "guests": I(), "breakfast": B()}, ("city", "check_in", "nights"),
        lambda r: {"city": _pick(r, CITIES), "check_in": _date(r), "nights": _small(r, 1, 10),
                   "guests": _small(r, 1, 4), "breakfast": _flag(r, ("with breakfast",), ("without breakfast",))},
        ("Book a hotel in {city} from {check_in} for {nights} nights.",
         "Reserve a room in {city}, checking in {check_in}, {nights} nights, {guests} guests.",
         "I need a hotel in {city} on {check_in} for {nights} nights {breakfast}."),
        ("Get me accommodation in {city}: {nights} nights starting {check_in}.",
         "Hotel for {guests} in {city}, arriving {check_in}, staying {nights} nights."),
        lambda a, r: {"hotel": f"Hotel {r.choice(SURNAMES)}", "confirmation": _code(r, 3, 4)},
        "Booked {hotel} in {city}, confirmation {confirmation}.",
    ),
    ToolDef(
        "request_ride", "transport", "Request a car ride", "order a ride",
        {"pickup": S(), "dropoff": S(), "ride_type": E("standard", "xl", "premium"), "passengers": I()},
        ("pickup", "dropoff"),
        lambda r: {**dict(zip(("pickup", "dropoff"), [(p, p) for p in r.sample(PLACES, 2)])),
                   "ride_type": _pick(r, {"standard": ("standard",), "xl": ("XL", "large"), "premium": ("premium",)}),
                   "passengers": _small(r, 1, 6)},
        ("Get me a ride from {pickup} to {dropoff}.", "Call a {ride_type} car from {pickup} to {dropoff}.",
         "I need a taxi to {dropoff} from {pickup} for {passengers} people."),
        ("Order a {ride_type} ride, pickup at {pickup}, going to {dropoff}.",),
        lambda a, r: {"driver": r.choice(NAMES), "eta_minutes": r.randint(2, 15)},
        "{driver} will pick you up in {eta_minutes} minutes.", followup="dropoff",
    ),
    ToolDef(
        "get_directions", "maps", "Route between two places", "give directions",
        {"origin": S(), "destination": S(), "mode": E("driving", "walking", "transit", "cycling")},
        ("origin", "destination"),
        lambda r: {**dict(zip(("origin", "destination"), [(p, p) for p in r.sample(PLACES, 2)])),
                   "mode": _pick(r, {"driving": ("car",), "walking": ("foot",), "transit": ("public transport",),
                                     "cycling": ("bike",)})},
        ("How do I get from {origin} to {destination}?", "Directions from {origin} to {destination} by {mode}.",
         "What's the route from {origin} to {destination} by {mode}?"),
        ("Show me how to reach {destination} from {origin} by {mode}.",),
        lambda a, r: {"duration_minutes": r.randint(5, 90), "distance_km": round(r.uniform(0.5, 40), 1)},
        "It takes about {duration_minutes} minutes ({distance_km} km).", followup="destination",
    ),
    ToolDef(
        "find_restaurants", "food", "Find restaurants in a city", "find restaurants",
        {"city": S(), "cuisine": S(), "price_range": E("$", "$$", "$$$"), "open_now": B()}, ("city",),
        lambda r: {"city": _pick(r, CITIES), "cuisine": _pick(r, CUISINES),
                   "price_range": _pick(r, {"$": ("cheap",), "$$": ("mid-range",), "$$$": ("upscale",)}),
                   "open_now": _flag(r, ("open now",))},
        ("Find {cuisine} restaurants in {city}.", "Any {price_range} {cuisine} places in {city}?",
         "Which restaurants in {city} are {open_now}?", "Where can I get dinner in {city}?"),
        ("Recommend a {price_range} spot for {cuisine} food in {city}.", "Where can I eat {cuisine} in {city}?"),
        lambda a, r: {"top_pick": f"{r.choice(SURNAMES)}'s Kitchen", "rating": round(r.uniform(3.5, 5), 1)},
        "Try {top_pick} (rated {rating}).", followup="city",
    ),
    ToolDef(
        "book_table", "food", "Reserve a restaurant table", "reserve restaurant tables",
        {"restaurant": S(), "date": DATE, "time": TIME, "party_size": I()}, ("restaurant", "date", "time", "party_size"),
        lambda r: {"restaurant": (n := f"{r.choice(SURNAMES)}'s Kitchen", n), "date": _date(r), "time": _time(r),
                   "party_size": _small(r, 1, 8)},
        (),
        ("Reserve a table at {restaurant} for {party_size} on {date} at {time}.",
         "Can you book {restaurant}, {party_size} people, {date}, {time}?",
         "Table for {party_size} at {restaurant} on {date} at {time}, please."),
        lambda a, r: {"confirmation": _code(r, 2, 5)},
        "Your table at {restaurant} is booked (confirmation {confirmation}).", held_out=True,
    ),
    ToolDef(
        "search_recipes", "food", "Find recipes by ingredients", "search recipes",
        {"ingredients": A(S()), "max_minutes": I(), "vegetarian": B()}, ("ingredients",),
        lambda r: {"ingredients": (i := r.sample(INGREDIENTS, r.randint(2, 3)), _listing(i)),
                   "max_minutes": _pick(r, (15, 20, 30, 45, 60)), "vegetarian": _flag(r, ("vegetarian",))},
        ("What can I cook with {ingredients}?", "Find a recipe using {ingredients} that takes under {max_minutes} minutes.",
         "Give me {vegetarian} recipes with {ingredients}."),
        ("I have {ingredients} in the fridge. Any recipe ideas?", "Quick recipe with {ingredients}, at most {max_minutes} minutes."),
        lambda a, r: {"recipe": f"{a['ingredients'][0]} stir-fry", "minutes": r.randint(10, 60)},
        "You could make a {recipe} ({minutes} minutes).",
    ),
    ToolDef(
        "create_calendar_event", "productivity", "Add an event to the calendar", "manage your calendar",
        {"title": S(), "date": DATE, "time": TIME, "duration_minutes": I(), "attendees": A(S("email"))},
        ("title", "date", "time"),
        lambda r: {"title": _pick(r, EVENT_TITLES), "date": _date(r), "time": _time(r),
                   "duration_minutes": _pick(r, (15, 30, 45, 60, 90)),
                   "attendees": (e := [_email(r) for _ in range(r.randint(1, 2))], _listing(e))},
        ("Schedule '{title}' on {date} at {time}.",
         "Add a calendar event called {title} on {date} at {time} for {duration_minutes} minutes.",
         "Set up '{title}' on {date} at {time} and invite {attendees}."),
        ("Put {title} in my calendar for {date}, {time}, lasting {duration_minutes} minutes.",
         "Create an event '{title}' at {time} on {date} with {attendees}."),
        lambda a, r: {"event_id": r.randint(1000, 9999)}, "Added '{title}' on {date} at {time}.",
    ),
    ToolDef(
        "set_reminder", "productivity", "Set a reminder", "set reminders",
        {"text": S(), "time": TIME, "repeat": E("none", "daily", "weekly")}, ("text", "time"),
        lambda r: {"text": _pick(r, REMINDERS), "time": _time(r),
                   "repeat": _pick(r, {"none": ("one-time",), "daily": ("daily",), "weekly": ("weekly",)})},
        ("Remind me to {text} at {time}.", "Set a reminder at {time} to {text}.",
         "Set a {repeat} reminder at {time} to {text}."),
        ("At {time}, remind me that I need to {text}.", "I keep forgetting to {text}; set a {repeat} reminder for {time}."),
        lambda a, r: {"reminder_id": r.randint(100, 999)}, "Reminder set for {time}: {text}.", followup="time",
    ),
    ToolDef(
        "add_todo", "productivity", "Add a task to the to-do list", "manage your to-do list",
        {"task": S(), "priority": E("low", "medium", "high"), "tags": A(S())}, ("task",),
        lambda r: {"task": _pick(r, TASKS), "priority": _pick(r, ("low", "medium", "high")),
                   "tags": (t := r.sample(TAGS, r.randint(1, 2)), _listing(t))},
        ("Add '{task}' to my to-do list.", "Put {task} on my todo list with {priority} priority.",
         "New task: {task}, tagged {tags}."),
        ("Note down a {priority} priority task: {task}.", "Add {task} to my tasks and tag it {tags}."),
        lambda a, r: {"todo_id": r.randint(1, 500)}, "Added '{task}' to your list.", followup="task",
    ),
    ToolDef(
        "send_email", "communication", "Send an email", "send emails",
        {"to": S("email address"), "subject": S(), "body": S()}, ("to", "subject", "body"),
        lambda r: {"to": (e := _email(r), e), "subject": _pick(r, SUBJECTS), "body": _pick(r, BODIES)},
        ("Email {to} with the subject '{subject}' saying: {body}", "Send an email to {to}. Subject: {subject}. Message: {body}",
         "Write to {to} about '{subject}': {body}"),
        ("Shoot {to} a quick email titled '{subject}': {body}",),
        lambda a, r: {"status": "sent"}, "Email sent to {to}.",
    ),
    ToolDef(
        "send_message", "communication", "Send a text message", "send text messages",
        {"recipient": S(), "text": S()}, ("recipient", "text"),
        lambda r: {"recipient": _pick(r, NAMES), "text": _pick(r, BODIES)},
        ("Text {recipient}: {text}", "Send {recipient} a message saying '{text}'.", "Message {recipient} that {text}."),
        ("Let {recipient} know: {text}",),
        lambda a, r: {"delivered": True}, "Message sent to {recipient}.", followup="recipient",
    ),
    ToolDef(
        "create_contact", "communication", "Save a new contact", "manage contacts",
        {"name": S(), "phone": S(), "address": ADDRESS}, ("name", "phone"),
        lambda r: {"name": (n := f"{r.choice(NAMES)} {r.choice(SURNAMES)}", n),
                   "phone": (p := f"+1 555 {r.randint(100, 999)} {r.randint(1000, 9999)}", p), "address": _address(r)},
        ("Save {name} as a contact with number {phone}.", "Add a contact: {name}, phone {phone}, address {address}.",
         "New contact {name}, {phone}, who lives at {address}."),
        ("Store {name}'s number {phone} and address {address} in my contacts.",),
        lambda a, r: {"contact_id": r.randint(1, 900)}, "Saved {name} to your contacts.",
    ),
    ToolDef(
        "update_shipping_address", "shopping", "Change an order's shipping address", "change shipping addresses",
        {"order_id": S(), "address": SHIP_ADDRESS}, ("order_id", "address"),
        lambda r: {"order_id": (o := f"ORD-{r.randint(10000, 99999)}", o), "address": _address(r, country=True)},
        (),
        ("Change the delivery address of order {order_id} to {address}.", "Ship order {order_id} to {address} instead.",
         "Please update order {order_id}: new address {address}."),
        lambda a, r: {"updated": True}, "Order {order_id} will ship to the new address.", held_out=True,
    ),
    ToolDef(
        "search_products", "shopping", "Search the store catalog", "search the store",
        {"query": S(), "max_price": N(), "in_stock": B()}, ("query",),
        lambda r: {"query": _pick(r, PRODUCTS), "max_price": _money(r, 10, 400), "in_stock": _flag(r, ("in stock",))},
        ("Search the store for {query}.", "Find {query} under {max_price} dollars.", "Show me {query} that are {in_stock}."),
        ("Look for {query} priced below {max_price}.", "Do you have {query}? Only items {in_stock}."),
        lambda a, r: {"count": r.randint(0, 40), "top": f"{r.choice(SURNAMES)} {a['query']}"},
        "Found {count} results; the top one is {top}.", followup="query",
    ),
    ToolDef(
        "add_to_cart", "shopping", "Add a product to the cart", "add items to your cart",
        {"product_id": S(), "quantity": I()}, ("product_id", "quantity"),
        lambda r: {"product_id": (p := f"SKU-{r.randint(1000, 9999)}", p), "quantity": _small(r, 1, 10)},
        ("Add {quantity} of item {product_id} to my cart.", "Put product {product_id} in the cart, quantity {quantity}.",
         "I'll take {quantity} x {product_id}."),
        ("Add item {product_id} to my basket, {quantity} units.",),
        lambda a, r: {"cart_items": r.randint(1, 12)}, "Added {quantity} x {product_id} to your cart.",
    ),
    ToolDef(
        "track_package", "shopping", "Track a shipment", "track packages",
        {"tracking_number": S(), "carrier": E("ups", "fedex", "dhl", "usps")}, ("tracking_number",),
        lambda r: {"tracking_number": (t := _code(r, 2, 9), t),
                   "carrier": _pick(r, {"ups": ("UPS",), "fedex": ("FedEx",), "dhl": ("DHL",), "usps": ("USPS",)})},
        ("Where is my package {tracking_number}?", "Track {carrier} shipment {tracking_number}.",
         "Status of parcel {tracking_number} with {carrier}?"),
        ("Has my {carrier} package {tracking_number} arrived?",),
        lambda a, r: {"status": r.choice(("in transit", "out for delivery", "delivered"))},
        "Package {tracking_number} is {status}.", followup="tracking_number",
    ),
    ToolDef(
        "create_invoice", "business", "Create an invoice", "create invoices",
        {"customer": S(), "items": A(O({"description": S(), "quantity": I(), "unit_price": N()},
                                       ("description", "quantity", "unit_price"))), "due_date": DATE},
        ("customer", "items"),
        lambda r: {"customer": (c := f"{r.choice(SURNAMES)} Ltd", c), "items": _invoice_items(r), "due_date": _date(r)},
        ("Create an invoice for {customer} for {items}.", "Bill {customer}: {items}, due {due_date}.",
         "Make an invoice to {customer} with {items}."),
        ("Invoice {customer} for {items}; payment due {due_date}.",),
        lambda a, r: {"invoice_id": f"INV-{r.randint(1000, 9999)}",
                      "total": round(sum(i["quantity"] * i["unit_price"] for i in a["items"]), 2)},
        "Invoice {invoice_id} for {customer} totals {total}.",
    ),
    ToolDef(
        "play_music", "entertainment", "Play music", "play music",
        {"query": S(), "shuffle": B(), "volume": I("0-100")}, ("query",),
        lambda r: {"query": _pick(r, SONGS), "shuffle": _flag(r, ("on shuffle",)), "volume": _pick(r, (20, 30, 50, 70, 80))},
        ("Play {query}.", "Put on some {query} at volume {volume}.", "Play {query} {shuffle}."),
        ("I want to hear {query}, volume {volume}.", "Start {query} {shuffle}, please."),
        lambda a, r: {"playing": True}, "Now playing {query}.", followup="query",
    ),
    ToolDef(
        "get_movie_showtimes", "entertainment", "Cinema showtimes for a movie", "look up movie showtimes",
        {"movie": S(), "city": S(), "date": DATE}, ("movie", "city"),
        lambda r: {"movie": _pick(r, MOVIES), "city": _pick(r, CITIES), "date": _date(r)},
        ("When is {movie} playing in {city}?", "Showtimes for {movie} in {city} on {date}?",
         "Where can I watch {movie} in {city}?"),
        ("Is {movie} showing anywhere in {city} on {date}?",),
        lambda a, r: {"times": sorted(r.sample(("14:00", "16:30", "18:45", "21:00", "22:15"), 2))},
        "{movie} is showing at {times[0]} and {times[1]}.", followup="city",
    ),
    ToolDef(
        "get_sports_scores", "sports", "Latest game result for a team", "check sports scores",
        {"team": S(), "league": E("NBA", "NFL", "MLB", "NHL")}, ("team",),
        lambda r: {"league": (lg := r.choice(list(TEAMS)), lg), "team": (t := r.choice(TEAMS[lg]), t)},
        ("How did the {team} do last night?", "Latest score for the {team}?", "Get the {league} score for the {team}."),
        ("Did the {team} win their last {league} game?",),
        lambda a, r: {"result": r.choice(("won", "lost")), "score": f"{r.randint(1, 120)}-{r.randint(1, 120)}"},
        "The {team} {result}, {score}.",
    ),
    ToolDef(
        "get_news", "news", "Latest news headlines", "fetch the news",
        {"topic": S(), "count": I(), "language": E("en", "es", "fr", "de")}, ("topic",),
        lambda r: {"topic": _pick(r, TOPICS), "count": _small(r, 2, 10),
                   "language": _pick(r, {"en": ("English",), "es": ("Spanish",), "fr": ("French",), "de": ("German",)})},
        ("What's the latest news on {topic}?", "Give me {count} headlines about {topic}.",
         "News about {topic} in {language}, please."),
        ("Any recent stories about {topic}? Show {count}.", "Headlines on {topic}, in {language}."),
        lambda a, r: {"headline": f"New report on {a['topic']} released"}, "Top story: {headline}.", followup="topic",
    ),
    ToolDef(
        "translate_text", "language", "Translate text", "translate text",
        {"text": S(), "target_language": S()}, ("text", "target_language"),
        lambda r: {"text": _pick(r, tuple(PHRASES)), "target_language": _pick(r, LANGUAGES)},
        ("Translate '{text}' into {target_language}.", "How do you say '{text}' in {target_language}?",
         "What is '{text}' in {target_language}?"),
        ("Can you put '{text}' into {target_language} for me?",),
        lambda a, r: {"translation": PHRASES[a["text"]][a["target_language"]]},
        "In {target_language}: {translation}.", followup="target_language", self_answerable=True,
    ),
    ToolDef(
        "define_word", "language", "Dictionary definition of a word", "look up definitions",
        {"word": S(), "include_examples": B()}, ("word",),
        lambda r: {"word": _pick(r, tuple(WORDS)), "include_examples": _flag(r, ("with examples",), ("without examples",))},
        (),
        ("What does '{word}' mean?", "Define the word {word} {include_examples}.", "Look up {word} in the dictionary."),
        lambda a, r: {"definition": WORDS[a["word"]]}, "'{word}' means {definition}.", followup="word",
        self_answerable=True, held_out=True,
    ),
    ToolDef(
        "convert_units", "math", "Convert between units", "convert units",
        {"value": N(), "from_unit": S(), "to_unit": S()}, ("value", "from_unit", "to_unit"),
        lambda r: _unit_values(r),
        ("Convert {value} {from_unit} to {to_unit}.", "How many {to_unit} is {value} {from_unit}?",
         "{value} {from_unit} in {to_unit}?"),
        ("What do {value} {from_unit} come to in {to_unit}?",),
        lambda a, r: {"result": round(a["value"] * {(f, t): k for f, t, k in UNIT_PAIRS}[a["from_unit"], a["to_unit"]], 2)},
        "{value} {from_unit} is {result} {to_unit}.", self_answerable=True,
    ),
    ToolDef(
        "calculate", "math", "Evaluate an arithmetic expression", "do calculations",
        {"expression": S()}, ("expression",),
        lambda r: {"expression": (e := _expression(r), e)},
        ("What is {expression}?", "Calculate {expression}.", "Compute {expression} for me."),
        ("Work out {expression}.",),
        lambda a, r: {"result": _evaluate(a["expression"])}, "{expression} = {result}.", self_answerable=True,
    ),
    ToolDef(
        "calculate_bmi", "health", "Body mass index", "calculate BMI",
        {"weight_kg": N(), "height_cm": N()}, ("weight_kg", "height_cm"),
        lambda r: {"weight_kg": (w := r.randint(45, 120), str(w)), "height_cm": (h := r.randint(150, 200), str(h))},
        ("What's the BMI for {weight_kg} kg and {height_cm} cm?",
         "Calculate my BMI: I weigh {weight_kg} kg and I'm {height_cm} cm tall.",
         "BMI for someone {height_cm} cm tall weighing {weight_kg} kg?"),
        ("I'm {height_cm} cm and {weight_kg} kg. What's my body mass index?",),
        lambda a, r: {"bmi": round(a["weight_kg"] / (a["height_cm"] / 100) ** 2, 1)}, "The BMI is {bmi}.",
    ),
    ToolDef(
        "log_workout", "health", "Log a workout", "log workouts",
        {"activity": E(*ACTIVITIES), "minutes": I(), "calories": I()}, ("activity", "minutes"),
        lambda r: {"activity": _pick(r, ACTIVITIES), "minutes": _pick(r, (15, 20, 30, 45, 60, 90)),
                   "calories": _pick(r, (120, 200, 250, 340, 480))},
        ("Log a {minutes} minute {activity} workout.", "I did {activity} for {minutes} minutes, please record it.",
         "Record {minutes} minutes of {activity}, {calories} calories burned."),
        ("Add today's {activity} session to my log: {minutes} min, {calories} kcal.",),
        lambda a, r: {"weekly_minutes": a["minutes"] + r.randint(0, 200)}, "Logged {minutes} minutes of {activity}.",
    ),
    ToolDef(
        "set_thermostat", "smart_home", "Set the thermostat", "control the thermostat",
        {"temperature": N(), "room": S(), "mode": E("heat", "cool", "auto")}, ("temperature",),
        lambda r: {"temperature": _pick(r, (18, 19, 20, 21, 22, 23, 24, 20.5, 21.5)),
                   "room": _pick(r, ("living room", "bedroom", "office", "kitchen")), "mode": _pick(r, ("heat", "cool", "auto"))},
        ("Set the thermostat to {temperature} degrees.", "Set the {room} to {temperature} degrees in {mode} mode.",
         "Make it {temperature} degrees in the {room}."),
        ("Turn the {room} thermostat to {temperature}, mode {mode}.",),
        lambda a, r: {"ok": True}, "Thermostat set to {temperature} degrees.", followup="temperature",
    ),
    ToolDef(
        "control_lights", "smart_home", "Switch or dim the lights", "control the lights",
        {"room": S(), "state": E("on", "off"), "brightness": I("0-100")}, ("room", "state"),
        lambda r: {"room": _pick(r, ("living room", "bedroom", "kitchen", "hallway", "office")),
                   "state": _pick(r, ("on", "off")), "brightness": _pick(r, (10, 25, 40, 50, 75))},
        ("Turn {state} the lights in the {room}.", "Switch the {room} lights {state}.",
         ("Dim the {room} lights to {brightness} percent.", {"state": "on"})),
        ("Lights {state} in the {room}, please.", ("Set the {room} lights to {brightness}% brightness.", {"state": "on"})),
        lambda a, r: {"ok": True}, "The {room} lights are {state}.", followup="room",
    ),
    ToolDef(
        "generate_password", "security", "Generate a random password", "generate passwords",
        {"length": I(), "include_symbols": B()}, ("length",),
        lambda r: {"length": _pick(r, (8, 12, 16, 20, 24)),
                   "include_symbols": _flag(r, ("with symbols",), ("without symbols",))},
        (),
        ("Generate a {length} character password.", "I need a new password, {length} characters long, {include_symbols}.",
         "Make me a random password of length {length} {include_symbols}."),
        lambda a, r: {"password": "".join(r.choices(string.ascii_letters + string.digits, k=a["length"]))},
        "Here is your password: {password}", self_answerable=True, held_out=True,
    ),
    ToolDef(
        "search_jobs", "careers", "Search job listings", "search for jobs",
        {"title": S(), "location": S(), "remote": B(), "min_salary": I()}, ("title", "location"),
        lambda r: {"title": _pick(r, ("data analyst", "nurse", "web developer", "teacher", "accountant")),
                   "location": _pick(r, CITIES), "remote": _flag(r, ("remote",)),
                   "min_salary": _pick(r, (40000, 55000, 70000, 90000))},
        (),
        ("Find {title} jobs in {location}.", "Search for {remote} {title} positions in {location} paying at least {min_salary}.",
         "Any {title} openings in {location} with a salary above {min_salary}?"),
        lambda a, r: {"matches": r.randint(0, 60)}, "Found {matches} {title} jobs in {location}.",
        followup="location", held_out=True,
    ),
]


def _invoice_items(r: random.Random) -> Value:
    items, texts = [], []
    for desc in r.sample(("Logo design", "Hosting", "Consulting hour", "Website audit", "Photo shoot", "Translation"),
                         r.randint(1, 2)):
        qty, price = r.randint(1, 5), round(r.uniform(10, 300), 2)
        items.append({"description": desc, "quantity": qty, "unit_price": price})
        texts.append(f"{qty} x {desc} at {price:.2f}")
    return items, _listing(texts)


def _unit_values(r: random.Random) -> dict[str, Value]:
    f, t, _ = r.choice(UNIT_PAIRS)
    v = r.randint(1, 200) if r.random() < 0.6 else round(r.uniform(1, 100), 1)
    return {"value": (v, str(v)), "from_unit": (f, f), "to_unit": (t, t)}


def _expression(r: random.Random) -> str:
    a, b, c = r.randint(2, 99), r.randint(2, 99), r.randint(2, 12)
    return r.choice((f"{a} * {b}", f"{a} + {b} * {c}", f"({a} + {b}) / {c}", f"{a} - {b}", f"{a} * {c} - {b}"))


def _evaluate(expression: str) -> float:
    """The value of an expression `_expression` wrote (numbers, + - * /, parentheses), without eval()."""
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.BinOp):
            return ops[type(node.op)](walk(node.left), walk(node.right))
        return node.value  # type: ignore[attr-defined]  # a Constant

    return round(walk(ast.parse(expression, mode="eval").body), 2)


TOOLS: dict[str, ToolDef] = {t.name: t for t in _CATALOG}
HELD_OUT_TOOLS: tuple[str, ...] = tuple(t.name for t in _CATALOG if t.held_out)

# ------------------------------------------------------------------------------------ no-call material

GENERAL_QA = (
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is photosynthesis?", "Photosynthesis is how plants turn light, water and carbon dioxide into sugar and oxygen."),
    ("Why is the sky blue?", "Air scatters blue light more than red light, so the sky looks blue."),
    ("What's the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("Can you explain what a noun is?", "A noun is a word that names a person, place, thing or idea."),
    ("Give me a tip for sleeping better.", "Keep a regular bedtime and avoid screens for an hour before sleep."),
    ("What does DNA stand for?", "DNA stands for deoxyribonucleic acid."),
    ("How many continents are there?", "There are seven continents."),
    ("Write a haiku about autumn.", "Crisp leaves drift and fall,\ngolden light on quiet paths,\nthe year exhales slow."),
    ("What is the speed of light?", "Light travels at about 300,000 kilometres per second."),
    ("Suggest a name for a golden retriever.", "How about Sunny? It suits a golden retriever."),
    ("What's the difference between weather and climate?",
     "Weather is the day-to-day state of the air; climate is the average over many years."),
    ("Who was the first person on the Moon?", "Neil Armstrong was the first person to walk on the Moon, in 1969."),
    ("How do I boil an egg?", "Put the egg in boiling water for about 9 minutes, then cool it in cold water."),
    ("What is the tallest mountain in the world?", "Mount Everest is the tallest mountain above sea level."),
    ("Tell me a fun fact about octopuses.", "Octopuses have three hearts and blue blood."),
    ("What language is spoken in Brazil?", "Portuguese is the main language of Brazil."),
    ("Explain gravity in one sentence.", "Gravity is the force by which masses attract each other."),
    ("What's a good way to learn a new language?", "Practise a little every day and speak with native speakers."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("Who discovered penicillin?", "Alexander Fleming discovered penicillin in 1928."),
    ("Why do we have seasons?", "Earth's tilted axis changes how directly sunlight hits each hemisphere during the year."),
    ("Recommend a classic novel.", "Try Pride and Prejudice by Jane Austen."),
    ("What is the freezing point of water?", "Water freezes at 0 degrees Celsius."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("How many minutes are in a day?", "A day has 1,440 minutes."),
    ("What does a thesaurus do?", "A thesaurus lists words with similar and opposite meanings."),
    ("Explain what a verb is.", "A verb is a word for an action, an event or a state."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("Give me an idea for a rainy afternoon.", "Bake some bread; it fills the house with a lovely smell."),
    ("Which planet is closest to the Sun?", "Mercury is the closest planet to the Sun."),
    ("What is the main gas in the air we breathe?", "Nitrogen makes up about 78% of the air."),
    ("Write a short motto for a bakery.", "Fresh from our oven to your table."),
    ("Who developed the theory of relativity?", "Albert Einstein developed the theory of relativity."),
    ("How do bees make honey?", "Bees collect nectar, break it down with enzymes and let it thicken in the comb."),
    ("What's a polite way to decline an invitation?", "Thank them warmly, say you can't make it, and wish them a great time."),
    ("Summarise the plot of Cinderella in one sentence.",
     "A mistreated young woman goes to a royal ball with a fairy godmother's help and wins the prince's heart."),
    ("Why do leaves change colour in autumn?", "Chlorophyll breaks down, revealing yellow and orange pigments."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("How can I focus better while studying?", "Work in short blocks with breaks, and keep your phone in another room."),
    ("What is an adjective?", "An adjective is a word that describes a noun, like 'blue' or 'tall'."),
    ("Name three primary colours.", "Red, yellow and blue are the traditional primary colours."),
    # test only from here
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("How many bones are in the adult human body?", "An adult human has 206 bones."),
    ("Who composed the Four Seasons?", "Antonio Vivaldi composed The Four Seasons."),
    ("What is the smallest prime number?", "The smallest prime number is 2."),
    ("Give me a synonym for happy.", "A synonym for happy is cheerful."),
    ("What causes rainbows?", "Sunlight is bent and split into colours by raindrops."),
    ("Which ocean is the largest?", "The Pacific is the largest ocean."),
    ("What is a haiku?", "A haiku is a three-line poem with five, seven and five syllables."),
    ("Who invented the telephone?", "Alexander Graham Bell is credited with inventing the telephone."),
    ("Suggest a hobby I can do at home.", "You could try sketching; all you need is a pencil and paper."),
)
GENERAL_QA_TRAIN = 48  # the first 48 are for train/valid, the rest for test
SMALL_TALK = (
    ("Hi there!", "Hello! How can I help you today?"),
    ("Thanks, that's all.", "You're welcome! Have a great day."),
    ("Who are you?", "I'm an assistant that can answer questions and use tools to get things done."),
    ("Good morning!", "Good morning! What can I do for you?"),
    ("You're very helpful.", "Thank you! I'm glad I could help."),
    ("How are you today?", "I'm doing well, thanks for asking. How can I help?"),
    ("What can you do?", "I can answer questions and use the tools available to me to help with tasks."),
    ("Tell me a joke.", "Why did the scarecrow win an award? Because he was outstanding in his field."),
    # test only from here
    ("Hello, anyone there?", "Yes, I'm here! How can I help?"),
    ("Have a nice evening.", "Thank you, you too!"),
    ("Can you tell me something cheerful?", "Sure: somewhere right now, a dog is meeting its new family."),
)
SMALL_TALK_TRAIN = 8
THANKS = (("Thanks!", "You're welcome!"), ("Great, thank you.", "Happy to help!"),
          ("Perfect, thanks a lot.", "Anytime! Anything else?"), ("Cool, thanks.", "You're welcome."))
THANKS_TRAIN = 3
FOLLOWUPS = ("What about {x}?", "And {x}?", "How about {x}?", "Same for {x}, please.", "Now do {x}.", "And for {x}?")
FOLLOWUPS_TRAIN = 4
JOINERS = (" Also, ", " And ", " Then ", " Plus, ", " Additionally, ", " Next, ", " Besides that, ", " In addition, ",
           " On top of that, ", " Separately, ", " Oh, and ", " After that, ")
JOINERS_TRAIN = 10
# Training-only joiners of the two kinds the test's joiners are ("Oh, and": an interjection before the next
# request; "After that,": a sequencing adverb), never the test's strings themselves, so the test still
# measures joiners never seen, but no longer joiners unlike any seen.
TRAIN_JOINERS = (" Oh, also, ", " Oh, plus ", " Ah, and ", " Oh, one more thing: ", " Oh and also ", " Afterwards, ",
                 " After this, ", " Once that's done, ", " Following that, ", " When that's done, ", " Later, ",
                 " Also ", " and ", " ")

# Training-only variety (train and valid; the test split is never varied). Each tool has 4-5 training
# phrasings and 33 training tools: a small model memorises both and fails on held-out wordings and tools.
# Wrapping requests in greetings and sign-offs, and renaming the offered tools (camelCase, a namespace,
# another verb) so that the called name must be read off the tool list, make it read instead of recall.
PREFIXES = ("Hey, ", "Hi! ", "Quick question: ", "Please help: ", "Hello, ", "Okay, so ", "Can you help? ",
            "Hi there, ", "Um, ", "Good morning! ")
SUFFIXES = (" Thanks.", " Thank you!", " Please.", " Cheers.", " Thx", " Appreciate it.", " Thanks a lot!")
NAMESPACES = ("api_", "app_", "svc_", "tool_", "my_", "v2_")
VERB_SWAPS = {"get": ("fetch", "lookup", "retrieve", "query"), "search": ("find", "lookup", "query"),
              "find": ("search", "lookup", "locate"), "check": ("get", "verify", "lookup"),
              "book": ("reserve", "make"), "create": ("new", "make", "add"), "set": ("update", "change", "make"),
              "send": ("post", "deliver"), "calculate": ("compute", "calc"), "convert": ("exchange", "change"),
              "track": ("trace", "follow"), "add": ("put", "insert")}
VARY_SHARE = 0.3  # share of training requests wrapped in a greeting and/or sign-off
# Share of training requests written from the schema instead of a phrasing: the tool's description or
# capability, then its required and some optional arguments in random order, each named ("Book a hotel room:
# nights 3, city Oslo, check in 2026-03-04."). Off: on a GPU sweep (benchmarks/results/fc-recipe-sweep,
# sweep 4) 25% and 50% of such requests, and six more training joiners, left test accuracy where it was.
SCHEMA_SHARE = 0.0
RENAME_SHARE = 0.35  # share of training conversations whose tools are renamed
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a concise assistant. Keep answers short.",
                  "You are an assistant with access to tools.")
UNAVAILABLE = ("Sorry, I can't {capability} - none of my tools does that.",
               "I'm not able to {capability} with the tools I have.",
               "Unfortunately I have no tool to {capability}.")

# ---------------------------------------------------------------------------------------- conversations


def _slots(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _phrasings(tool: ToolDef, split: str) -> tuple[Phrasing, ...]:
    if tool.held_out:
        return tool.test_phrasings
    return tool.test_phrasings if split == "test" else tool.phrasings


def _schema_request(tool: ToolDef, r: random.Random) -> tuple[str, dict, str]:
    """A training request written from `tool`'s schema (see `SCHEMA_SHARE`)."""
    values = tool.sample(r)
    names = list(tool.required) + [k for k in tool.params if k not in tool.required and r.random() < 0.5]
    r.shuffle(names)
    parts = []
    for k in names:
        wording = values[k][1]
        parts.append(wording if tool.params[k].get("type") == "boolean" else f"{k.replace('_', ' ')} {wording}")
    sep = "; " if any("," in p for p in parts) else r.choice((", ", "; "))
    if r.random() < 0.5:
        text = f"{tool.description}: {sep.join(parts)}."
    else:
        text = f"{r.choice(('I want to', 'Please', 'Can you', 'Help me'))} {tool.capability}: {sep.join(parts)}."
    return text, {k: values[k][0] for k in tool.params if k in names}, text[0].lower() + text[1:]


def _request(tool: ToolDef, split: str, r: random.Random) -> tuple[str, dict, str]:
    """A user request for `tool`, the arguments it implies, and the request as it reads after a joiner."""
    if SCHEMA_SHARE and split != "test" and r.random() < SCHEMA_SHARE:
        return _schema_request(tool, r)
    phrasing = r.choice(_phrasings(tool, split))
    template, fixed = (phrasing, {}) if isinstance(phrasing, str) else phrasing
    values = tool.sample(r)
    slots = _slots(template)
    text = template.format(**{k: values[k][1] for k in slots})
    text = text[0].upper() + text[1:]
    # "Also, what's ..." but not "Also, i need ..." or "Also, aAPL ..."
    plain_word = not template.startswith("{") and not template.startswith(("I ", "I'"))
    joined = text[0].lower() + text[1:] if plain_word else text
    args = {**{k: values[k][0] for k in slots}, **fixed}
    return text, {k: args[k] for k in tool.params if k in args}, joined  # in signature order


def _vary(text: str, joined: str, r: random.Random) -> str:
    """A training request with a greeting and/or a sign-off (`joined`: its form after a greeting)."""
    if r.random() < VARY_SHARE:
        text = r.choice(PREFIXES) + joined if r.random() < 0.6 else text.rstrip(".?!") + r.choice(SUFFIXES)
    return text


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _rename(record: dict, r: random.Random) -> dict:
    """`record` with its offered tools renamed in one style, in the specs and in every call."""
    style = r.choice(("camel", "namespace", "verb"))
    prefix = r.choice(NAMESPACES)
    names, params = {}, {}
    for spec in record["tools"]:
        name = spec["function"]["name"]
        verb, _, rest = name.partition("_")
        if style == "camel":
            names[name] = _camel(name)
        elif style == "namespace" or verb not in VERB_SWAPS:
            names[name] = prefix + name
        else:
            names[name] = r.choice(VERB_SWAPS[verb]) + "_" + rest
        props = spec["function"]["parameters"]["properties"]
        params[name] = {p: _camel(p) if style == "camel" else p for p in props}
    if len(set(names.values())) < len(names):
        return record
    tools = []
    for spec in record["tools"]:
        fn = spec["function"]
        old, pmap = fn["name"], params[fn["name"]]
        schema = fn["parameters"]
        tools.append({"type": "function", "function": {
            **fn, "name": names[old], "parameters": {
                **schema, "properties": {pmap[k]: v for k, v in schema["properties"].items()},
                "required": [pmap[k] for k in schema["required"]]}}})
    messages = []
    for m in record["messages"]:
        if m.get("tool_calls"):
            m = {**m, "tool_calls": [
                {**c, "function": {"name": names[c["function"]["name"]], "arguments": json.dumps(
                    {params[c["function"]["name"]][k]: v for k, v in json.loads(c["function"]["arguments"]).items()})}}
                for c in m["tool_calls"]]}
        messages.append(m)
    return {**record, "messages": messages, "tools": tools}


class _Conversation:
    """Accumulates messages with unique tool-call ids."""

    def __init__(self, r: random.Random):
        self.r = r
        self.messages: list[dict] = []
        self.n_calls = 0

    def say(self, role: str, content: str) -> None:
        self.messages.append({"role": role, "content": content})

    def call(self, calls: list[tuple[ToolDef, dict]], with_results: bool) -> list[str]:
        ids = [f"call_{self.n_calls + i}" for i in range(len(calls))]
        self.n_calls += len(calls)
        self.messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": i, "type": "function", "function": {"name": t.name, "arguments": json.dumps(a)}}
            for i, (t, a) in zip(ids, calls)]})
        if not with_results:
            return []
        answers = []
        for i, (tool, args) in zip(ids, calls):
            result = tool.result(args, self.r)
            self.messages.append({"role": "tool", "tool_call_id": i, "content": json.dumps(result)})
            answers.append(tool.answer.format(**{**args, **result}))
        return answers


def _offer(needed: list[ToolDef], pool: list[ToolDef], r: random.Random, total: int) -> list[ToolDef]:
    others = [t for t in pool if t not in needed]
    offered = list(dict.fromkeys(needed)) + r.sample(others, max(0, total - len(set(needed))))
    r.shuffle(offered)
    return offered


def make_conversation(kind: str, split: str, r: random.Random) -> dict:
    """One record of the given kind for a split (`train`, `valid` or `test`).

    Train and valid use only the training tools and phrasings; test draws about 40% of its tools from
    `HELD_OUT_TOOLS` and uses only held-out phrasings.
    """
    seen = [t for t in _CATALOG if not t.held_out]
    held = [t for t in _CATALOG if t.held_out]
    test = split == "test"

    def pick_tool(exclude: tuple[ToolDef, ...] = ()) -> ToolDef:
        pool = held if test and r.random() < 0.4 else seen
        return r.choice([t for t in pool if t not in exclude])

    def cut(options: tuple, n_train: int) -> tuple:
        return options[n_train:] if test else options[:n_train]

    distractor_pool = _CATALOG if test else seen
    c = _Conversation(r)
    if r.random() < 0.25:
        c.say("system", r.choice(SYSTEM_PROMPTS))
    n_tools = r.randint(2, 3)

    if kind in ("single", "parallel"):
        first = pick_tool()
        needed = [first]
        requests = [_request(first, split, r)]
        if kind == "parallel":
            for _ in range(2 if r.random() < THREE_CALL_SHARE[split] else 1):
                tool = first if r.random() < 0.4 else pick_tool(tuple(needed))
                req = _request(tool, split, r)
                while any(req[1] == prev[1] for prev in requests):  # two identical calls would be one call
                    req = _request(tool, split, r)
                needed.append(tool)
                requests.append(req)
        text = requests[0][0] if test else _vary(requests[0][0], requests[0][2], r)
        joiners = cut(JOINERS, JOINERS_TRAIN) + (() if test else TRAIN_JOINERS)
        for _, _, joined in requests[1:]:
            text += r.choice(joiners) + joined
        c.say("user", text)
        # test conversations end at the call: the answer after a result is tested in multi-turn ones
        answers = c.call([(t, a) for t, (_, a, _) in zip(needed, requests)], with_results=not test and r.random() < 0.5)
        if answers:
            c.say("assistant", " ".join(answers))
        offered = _offer(needed, distractor_pool, r, max(n_tools, len(set(needed))))
    elif kind == "multi_turn":
        first = pick_tool()
        text, args, joined = _request(first, split, r)
        c.say("user", text if test else _vary(text, joined, r))
        c.say("assistant", c.call([(first, args)], with_results=True)[0])
        needed = [first]
        roll = r.random()
        if roll < 0.4 and first.followup:
            new_value = first.sample(r)[first.followup]
            while new_value[0] in args.values():  # a different city, and not the trip's origin either
                new_value = first.sample(r)[first.followup]
            c.say("user", r.choice(cut(FOLLOWUPS, FOLLOWUPS_TRAIN)).format(x=new_value[1]))
            answers = c.call([(first, {**args, first.followup: new_value[0]})], with_results=not test)
            if answers:
                c.say("assistant", answers[0])
        elif roll < 0.8:
            second = pick_tool((first,))
            needed.append(second)
            text, args2, joined = _request(second, split, r)
            c.say("user", text if test else _vary(text, joined, r))
            answers = c.call([(second, args2)], with_results=not test)
            if answers:
                c.say("assistant", answers[0])
        else:
            thanks, reply = r.choice(cut(THANKS, THANKS_TRAIN))
            c.say("user", thanks)
            c.say("assistant", reply)
        offered = _offer(needed, distractor_pool, r, max(n_tools, len(needed)))
    elif kind == "no_call":
        offered = r.sample(distractor_pool, n_tools)
        roll = r.random()
        domains = {t.domain for t in offered}
        absent = [t for t in (seen + held if test else seen)
                  if t.domain not in domains and not t.self_answerable and (test or not t.held_out)]
        if roll < 0.4:
            question, answer = r.choice(cut(GENERAL_QA, GENERAL_QA_TRAIN))
        elif roll < 0.6:
            question, answer = r.choice(cut(SMALL_TALK, SMALL_TALK_TRAIN))
        else:
            tool = r.choice(absent)
            question, _, joined = _request(tool, split, r)
            question = question if test else _vary(question, joined, r)
            answer = r.choice(UNAVAILABLE).format(capability=tool.capability)
        c.say("user", question)
        c.say("assistant", answer)
        needed = []
    else:
        raise ValueError(f"unknown conversation kind {kind!r}; expected one of {', '.join(KINDS)}")
    record = {
        "messages": c.messages,
        "tools": [t.spec() for t in offered],
        "metadata": {"kind": kind, "split": split, "held_out": any(t.held_out for t in needed)},
    }
    return record if test or r.random() >= RENAME_SHARE else _rename(record, r)


def write_tool_calling_dataset(
    out_dir: str | Path,
    n_train: int = 1000,
    n_valid: int = 100,
    n_test: int = 240,
    seed: int = 0,
    mix: dict[str, float] | None = None,
) -> dict[str, Path]:
    """Write `train.jsonl`, `valid.jsonl` and `test.jsonl` of tool-calling conversations.

    Args:
        out_dir: directory to write (created).
        n_train: training conversations.
        n_valid: validation conversations (same tools and phrasings as train, other draws).
        n_test: test conversations (held-out tools and phrasings).
        seed: the files are a function of the arguments only.
        mix: share of each kind (`single`, `parallel`, `multi_turn`, `no_call`) in every split; default
            `TRAIN_MIX` for train and valid (parallel calls up-weighted) and `DEFAULT_MIX` for test (the test
            split of a seed is the same whatever `n_train`). Each split gets exactly round(share * n) of each
            kind, shuffled.

    Returns:
        {"train": path, "valid": path, "test": path}
    """
    unknown = set(mix or {}) - set(KINDS)
    if unknown:
        raise ValueError(f"mix: unknown kinds {sorted(unknown)}; expected {', '.join(KINDS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        r = random.Random(f"forgekit-toolcalling-{seed}-{split}")
        shares = mix or (DEFAULT_MIX if split == "test" else TRAIN_MIX)
        total = sum(shares.values())
        counts = {k: round(n * shares.get(k, 0) / total) for k in KINDS}
        counts[max(counts, key=counts.get)] += n - sum(counts.values())
        kinds = [k for k in KINDS for _ in range(counts[k])]
        r.shuffle(kinds)
        rows = [make_conversation(k, split, r) for k in kinds]
        paths[split] = out / f"{split}.jsonl"
        write_jsonl(rows, paths[split])
    return paths
