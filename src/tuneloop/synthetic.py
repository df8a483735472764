"""Synthetic customer-support tickets for the offline demo: generated, not collected.

Every text here is produced by a seeded random generator from templates; none comes from a real
customer. Tickets carry one of three labels (billing, technical, account) and are built to be
non-trivial: the classes share vocabulary ("charged twice after the app crashed" is billing), about
10% of tickets mix two topics on purpose and are labelled by their main intent, and ~5% of words
carry a typo. A TF-IDF + logistic-regression baseline lands near 0.9 accuracy on version 1.

Version 2 is a drift of version 1, as after a product launch: a subscription/plan vocabulary, a new
mobile app (Acme Go) and new product names appear in about half of the tickets, and the label mix
moves from 40/35/25 to 30/40/30 (billing/technical/account). The labels stay the same.

`with_label_noise` makes the deliberately broken variant: a share of labels replaced by a wrong one.
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from tuneloop.errors import DataError

LABELS = ("billing", "technical", "account")
VERSIONS = (1, 2)
CLASS_MIX = {
    1: {"billing": 0.40, "technical": 0.35, "account": 0.25},
    2: {"billing": 0.30, "technical": 0.40, "account": 0.30},
}

# Together these set the difficulty, measured with TF-IDF + logistic regression on 1,000 v1 rows:
# mixed-topic tickets (0.10) and boundary tickets (0.08) each lose about half to any bag of words,
# foreign context clauses (0.35) blur keywords, so v1 accuracy sits near 0.91 instead of 0.99.
AMBIGUOUS_SHARE = 0.10
BOUNDARY_SHARE = 0.08
CONTEXT_SHARE = 0.35
# A quarter of the words are numbers or shorter than 3 letters and never get a typo; 0.065 of the
# rest gives ~5% misspelled words overall.
TYPO_RATE = 0.065
# Half of the v2 tickets use v2-only templates: a v1-trained baseline drops by ~0.1 (0.91 -> 0.80),
# drift a monitor should flag, yet the old model stays usable.
V2_NEW_SHARE = 0.5
MIN_WORDS, MAX_WORDS = 8, 30

Slot = Sequence[str] | Callable[[random.Random], str]


def _amount(rng: random.Random) -> str:
    """Return a made-up price such as $129.99."""
    return f"${rng.randint(4, 480)}.{rng.choice(['00', '99', '49', f'{rng.randint(0, 99):02d}'])}"


def _code(rng: random.Random) -> str:
    """Return a made-up error code such as E-1043 or 0x80070005."""
    if rng.random() < 0.5:
        return f"E-{rng.randint(100, 9999)}"
    return f"0x{rng.randint(0x10000000, 0x8FFFFFFF):08X}"


_SLOTS: dict[str, Slot] = {
    "product": ["Acme Cloud", "DataVault", "SyncBox", "TeamBoard", "Acme Desktop", "PhotoStash",
                "Acme Mail", "Acme Reports", "Acme Web", "ShareSpace"],
    "device": ["my iPhone 12", "a Pixel 7", "my Windows laptop", "the MacBook", "a Galaxy tablet",
               "my Chromebook", "the work PC", "Firefox", "Chrome", "Safari", "an old iPad"],
    "time": ["yesterday", "since Monday", "this morning", "last week", "since the last update",
             "earlier today", "over the weekend", "since I came back from holiday", "last night",
             "a few days ago", "since Friday", "an hour ago", "on {month} {days}"],
    "days": lambda r: str(r.randint(2, 14)),
    "amount": _amount,
    "code": _code,
    "order": lambda r: f"#{r.randint(10000, 999999)}",
    "name": ["Anna", "Ben", "Carlos", "Dana", "Eve", "Farid", "Grace", "Hiro", "Ines", "Jon",
             "Kemal", "Lena", "Maya", "Nils", "Omar", "Priya", "Rosa", "Sam", "Tariq", "Yuki"],
    "month": ["January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December"],
    "card": ["card", "Visa card", "credit card", "debit card", "company card", "PayPal"],
    "opener": ["Hi,", "Hello,", "Hello team,", "Hey,", "Good morning,", "Dear support,",
               "Hi there,", "Urgent:", "Quick question:", "Sorry to bother you,", "", "", ""],
    "closer": ["Thanks.", "Thank you!", "Please help.", "Any ideas?", "Cheers.", "Appreciate it.",
               "This is really frustrating.", "Let me know asap.", "Regards, {name}.",
               "Thanks in advance, {name}.", "", "", ""],
}
# v2 adds names to the shared slots (Acme Go twice: the launch product is the most mentioned);
# `plan` and `app` appear only in v2 templates.
_V2_SLOTS: dict[str, Slot] = {
    "product": list(_SLOTS["product"]) + ["Nimbus Plus", "Acme Go", "FlowDesk", "Acme Go"],
    "device": list(_SLOTS["device"]) + ["my Pixel 9", "an iPhone 16", "a Galaxy S24"],
    "plan": ["Basic", "Pro", "Team", "Family", "Premium", "Starter", "Business"],
    "app": ["Acme Go", "the Acme Go app", "the new mobile app", "the Acme Go app for Android"],
    "opener": list(_SLOTS["opener"]) + ["hey support,", "Hi Acme team,", "Hello again,"],
}


# Each label mixes clean intents with cross-vocabulary ones (billing told in crash words, account
# told in payment words) so that no single keyword decides the class.
_INTENTS: dict[int, dict[str, list[str]]] = {
    1: {
        "billing": [
            "I was charged twice for {product} {time}",
            "my invoice shows {amount} but I expected {amount}",
            "please refund the {amount} charge from {month}",
            "the payment of {amount} went through but {product} still says unpaid",
            "why did my {card} get charged {amount} {time}",
            "I need a copy of the invoice for order {order}",
            "the tax on my {month} bill looks wrong, it should be {amount}",
            "can you cancel the pending charge of {amount} on my {card}",
            "I got charged twice after the app crashed during checkout",
            "I was billed {amount} even though {product} kept crashing on {device}",
            "the refund for order {order} went to my old {card}, not the new one",
            "you still bill me {amount} a month for a user I removed from the account",
            "I was overcharged by {amount} for {product} in {month}",
            "the discount code was not applied and I paid the full {amount}",
            "the error {code} appeared at checkout but my {card} was charged anyway",
        ],
        "technical": [
            "{product} crashes when I open it on {device}",
            "I keep getting error {code} when syncing {product} {time}",
            "the upload is stuck at 99% on {device} {time}",
            "{product} has been very slow {time}, pages take {days} seconds to load",
            "notifications stopped working on {device} after the update",
            "the payment page won't load, it just shows error {code}",
            "the login screen freezes on {device} before I can type anything",
            "the PDF export of my invoice comes out blank in {product}",
            "files I save in {product} disappear after a restart",
            "search in {product} returns nothing {time}, error {code} in the console",
            "{product} shows a white screen on {device} {time}",
            "the sync between {device} and {product} stopped {time}",
            "the billing page in {product} crashes on {device} when I click download",
            "attachments over {days} MB fail to upload with error {code}",
            "the app keeps logging me out on {device} because it crashes",
        ],
        "account": [
            "I can't log in to {product} {time}",
            "please reset my password, the reset email never arrives",
            "how do I change the email address on my account",
            "my account was locked after too many attempts {time}",
            "I want to delete my account and all my data",
            "the two-factor code does not arrive on {device}",
            "please add a new user to our {product} workspace",
            "I can't log in after updating my {card} details",
            "my account got locked after the app crashed on {device}",
            "someone changed my password {time}, I think my account was hacked",
            "how can I transfer ownership of the workspace to {name}",
            "I need to merge my two accounts, one was created by mistake",
            "please change the name on my account to {name}",
            "my username shows the old company name after the invoice change",
            "I get error {code} when I try to verify my email address",
        ],
    },
    2: {
        "billing": [
            "my {plan} plan renewed at {amount} instead of {amount}",
            "how do I downgrade my subscription to the {plan} tier before the next bill",
            "I was charged for the annual {plan} plan but picked monthly",
            "the in-app purchase in {app} charged me twice",
            "the {plan} subscription price went up to {amount} without notice",
            "I upgraded to {plan} in {app} and got billed {amount} twice",
            "please prorate my plan change, I was charged {amount} for the full month",
            "my free trial of {plan} ended and I was billed even after I cancelled",
        ],
        "technical": [
            "{app} crashes on launch on {device}",
            "dark mode in {app} makes the text invisible",
            "the home screen widget of {app} won't refresh {time}",
            "offline mode in {app} loses my edits when the connection comes back",
            "{app} drains the battery on {device} {time}",
            "the {plan} plan features page in {app} is blank",
            "push notifications from {app} arrive {days} hours late",
            "{app} freezes when I open the subscription screen on {device}",
        ],
        "account": [
            "sign in with a passkey fails in {app} on {device}",
            "I can't switch between profiles in {app}",
            "please move my {plan} subscription to another account",
            "{app} keeps asking me to verify my identity {time}",
            "how do I link my login in {app} to my existing account",
            "family members can't join my {plan} plan, the invite link says invalid",
            "I lost access to my account after changing phones, {app} wants the old device",
            "my profile in {app} shows someone else's name and email",
        ],
    },
}
# A context clause tells when the problem started, in another label's words: it is realistic
# ("can't log in since the app crashed") and stops the baseline from keying on single words.
_CONTEXTS: dict[int, dict[str, list[str]]] = {
    1: {
        "billing": ["right after I paid the {amount} invoice", "since my {card} payment went through",
                    "after the refund of {amount} came through", "since I changed my billing details",
                    "after I was charged for the renewal", "when I entered my {card} at checkout"],
        "technical": ["after the app crashed", "since the {product} update", "when the page froze",
                      "after error {code} popped up", "while {device} was offline",
                      "after reinstalling the app on {device}"],
        "account": ["after I reset my password", "since I changed my email address",
                    "after logging in on {device}", "since my account was verified",
                    "after adding {name} as a user", "when I switched accounts"],
    },
    2: {
        "billing": ["since I switched to the {plan} plan", "after my subscription renewed"],
        "technical": ["since installing {app}", "after {app} updated itself"],
        "account": ["since I signed in with a passkey", "after I linked {app} to my account"],
    },
}
# Boundary complaints that support agents route either way: each template is drawn under both
# labels of its pair, so no model can get all of them right (~half are lost at 50/50 priors).
_BOUNDARY: dict[tuple[str, str], list[str]] = {
    ("billing", "technical"): [
        "my payment keeps failing with error {code}",
        "the checkout page shows {amount} and then times out on {device}",
        "the invoice for {month} never showed up in {product}",
        "I paid {amount} but the upgrade is not showing in {product}",
    ],
    ("account", "billing"): [
        "I was logged out and now my account shows as unpaid",
        "my account was suspended for a failed payment of {amount}",
        "I can't find the billing section in my account settings",
        "the receipt for {amount} went to my old email address",
    ],
    ("account", "technical"): [
        "I get error {code} when I try to sign in on {device}",
        "the settings page won't save my new email address",
        "{product} keeps logging me out on {device}",
        "the verification link opens a broken page in {product}",
    ],
}
# How a mixed-topic ticket joins its main intent to the side topic; half put the side topic first.
_CONNECTORS = ["{main}, and also {other}", "{other}. But mainly {main}", "{main}. Side note: {other}",
               "{other}, which is annoying, but the real problem is {main}", "{main}; {other} too",
               "{other}. Mostly though, {main}"]
_SLOT_RE = re.compile(r"\{(\w+)\}")
_WORD_RE = re.compile(r"([A-Za-z']{3,})([.,!?:;]*)")
_KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"


def _fill(template: str, slots: dict[str, Slot], rng: random.Random) -> str:
    """Fill each {slot} independently, so two {amount} in one template differ."""

    def value(match: re.Match[str]) -> str:
        slot = slots[match.group(1)]
        text = slot(rng) if callable(slot) else rng.choice(slot)
        return _fill(text, slots, rng) if "{" in text else text

    return _SLOT_RE.sub(value, template)


def _pick(table: dict[int, dict[str, list[str]]], label: str, version: int, rng: random.Random) -> str:
    """Pick one template; v2 draws from its new templates V2_NEW_SHARE of the time."""
    if version == 2 and rng.random() < V2_NEW_SHARE:
        return rng.choice(table[2][label])
    return rng.choice(table[1][label])


def _other(label: str, rng: random.Random) -> str:
    """Return one of the two labels that are not `label`."""
    return rng.choice([other for other in LABELS if other != label])


def _body(label: str, version: int, rng: random.Random, slots: dict[str, Slot]) -> str:
    """Return the ticket's core: a boundary complaint, or the intent mixed with another topic or
    followed by a context clause in another label's words."""
    if rng.random() < BOUNDARY_SHARE:
        template = rng.choice(_BOUNDARY[tuple(sorted((label, _other(label, rng))))])
    else:
        template = _pick(_INTENTS, label, version, rng)
    main = _fill(template, slots, rng)
    if rng.random() < AMBIGUOUS_SHARE:
        while True:  # 9% (v1) to 18% (v2) of mixed bodies run over MAX_WORDS: redraw the second topic
            other = _fill(_pick(_INTENTS, _other(label, rng), version, rng), slots, rng)
            mixed = rng.choice(_CONNECTORS).format(main=main, other=other)
            if len(mixed.split()) <= MAX_WORDS:
                return mixed
    if rng.random() < CONTEXT_SHARE:
        return main + " " + _fill(_pick(_CONTEXTS, _other(label, rng), version, rng), slots, rng)
    return main


def _typo(word: str, rng: random.Random) -> str:
    """Return `word` with one keyboard slip: swap, drop, double or replace a letter."""
    i = rng.randrange(len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:
        return word[:i] + word[i + 1:]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    return word[:i] + rng.choice(_KEYBOARD) + word[i + 1:]


def _add_typos(text: str, rng: random.Random) -> str:
    """Misspell about TYPO_RATE of the words; words under 3 letters and numbers are left alone."""
    words = text.split(" ")
    for i, word in enumerate(words):
        match = _WORD_RE.fullmatch(word)
        if match and rng.random() < TYPO_RATE:
            words[i] = _typo(match.group(1), rng) + match.group(2)
    return " ".join(words)


def _ticket(label: str, version: int, rng: random.Random, slots: dict[str, Slot]) -> str:
    """Assemble opener, body and closer into MIN_WORDS..MAX_WORDS words, then add typos."""
    body = _body(label, version, rng, slots) + rng.choice([".", ".", ".", "!", "?", ""])
    opener = _fill(rng.choice(slots["opener"]), slots, rng)
    if not opener.endswith(","):
        body = body[0].upper() + body[1:]
    closer = _fill(rng.choice(slots["closer"]), slots, rng)
    text = " ".join(part for part in (opener, body, closer) if part)
    if len(text.split()) > MAX_WORDS:
        text = body
    while len(text.split()) < MIN_WORDS:
        text += f" Ticket ref {_fill('{order}', slots, rng)}."
    if rng.random() < 0.15:  # some people never use the shift key; 15% is a guess, not a measurement
        text = text.lower()
    return _add_typos(text, rng)


def _allocate(rows: int, mix: dict[str, float]) -> list[str]:
    """Return exactly `rows` labels in the proportions `mix`, by largest remainder."""
    exact = {label: share * rows for label, share in mix.items()}
    counts = {label: int(value) for label, value in exact.items()}
    by_remainder = sorted(mix, key=lambda label: exact[label] - counts[label], reverse=True)
    for label in by_remainder[: rows - sum(counts.values())]:
        counts[label] += 1
    return [label for label in mix for _ in range(counts[label])]


def generate_tickets(version: int, rows: int, seed: int = 0) -> list[tuple[str, str]]:
    """Generate synthetic support tickets as (text, label) pairs.

    Args:
        version: 1 for the base distribution, 2 for the drifted one (see the module docstring).
        rows: number of tickets, >= 0; labels follow CLASS_MIX[version] exactly up to rounding.
        seed: the same (version, rows, seed) always gives the same list.

    Returns:
        Shuffled (text, label) pairs; texts have 8 to 30 words.

    Raises:
        DataError: for a version other than 1 or 2, or a negative row count.
    """
    if version not in VERSIONS:
        raise DataError(f"synthetic data version {version!r} does not exist; use 1 or 2")
    if rows < 0:
        raise DataError(f"rows={rows} is negative; ask for 0 or more tickets")
    rng = random.Random(f"tickets-v{version}-seed{seed}")
    slots = {**_SLOTS, **_V2_SLOTS} if version == 2 else dict(_SLOTS)
    labels = _allocate(rows, CLASS_MIX[version])
    rng.shuffle(labels)
    return [(_ticket(label, version, rng, slots), label) for label in labels]


def with_label_noise(
    rows: Sequence[tuple[str, str]], fraction: float, seed: int
) -> list[tuple[str, str]]:
    """Replace the label of exactly round(fraction * len(rows)) rows with a different label.

    The new label is drawn uniformly from the other labels (LABELS plus any label in `rows`), so
    fraction=0.7 leaves the true label as the minority and the signal is gone.

    Args:
        rows: (text, label) pairs; not modified.
        fraction: share of rows to corrupt, 0.0 to 1.0.
        seed: picks the rows and their new labels deterministically.

    Returns:
        A new list of (text, label) pairs in the same order.

    Raises:
        DataError: when fraction is outside [0, 1].
    """
    if not 0.0 <= fraction <= 1.0:
        raise DataError(f"label noise fraction={fraction} is outside [0, 1]; pass a share such as 0.1")
    rng = random.Random(f"noise-seed{seed}")
    labels = sorted(set(LABELS) | {label for _, label in rows})
    noisy = list(rows)
    for i in sorted(rng.sample(range(len(noisy)), round(fraction * len(noisy)))):
        text, label = noisy[i]
        noisy[i] = (text, rng.choice([other for other in labels if other != label]))
    return noisy


def write_csv(rows: Sequence[tuple[str, str]], path: str | Path) -> Path:
    """Write (text, label) pairs as a UTF-8 CSV with header `text,label`.

    Args:
        rows: (text, label) pairs.
        path: target file; missing parent directories are created.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path
