"""The alias ledger: compare-and-set alias moves, and their history, over an append-only log.

MLflow has no compare-and-set: `set_registered_model_alias` overwrites whatever is there, so two
promoters that both checked "champion is still v3" would both move it. What a tracking server does
guarantee, through its REST API alone, is that model version numbers of one registered model are
assigned by the server, unique and in commit order (its SQL store computes max+1 under a row lock
and retries on a conflict; a number is only handed out once every smaller one is visible). So the
ledger is a registered model of its own, `<model>.ledger`, whose versions are *claims*: each alias
move first appends a claim, and the claim's number orders it against every rival.

A claim carries the alias, `from` (the version the claimant saw on the alias), `to`, `head` (the
number of the newest completed claim for that alias the claimant had seen, read *before* the
alias), who, why, the pipeline run and an evidence link, and a status tag:
`pending` → `done` (the alias moved) | `lost` (a rival came first) | `aborted` (its claimant died).

Protocol for one move (`move`):
1. read the ledger (the head), then the alias; refuse at once if the alias is not the expected one;
2. append a pending claim;
3. the claim wins when no claim numbered between `head` and itself is pending or done (lost and
   aborted ones do not count); a pending rival is waited for, up to `lease` seconds after its
   creation, and after that treated as an orphan (step R);
4. the winner moves the alias, then marks its claim done; a loser marks its claim lost and raises.
Two claimants that saw the same head cannot both win: the one with the higher number sees the
other between head and itself. A claimant that read the head after a rival completed read the
alias after that rival moved it, so step 1 refuses it.

Crashes. The claim is written before the alias, so the alias never moves without its record. A
claimant killed after its claim leaves it `pending`; the next move, or `repair`, resolves it once
it is older than the lease, or at once when the claim's owner (host:pid) is this host and that
process is gone (R): `done` when the alias already points at its `to` (it died after
moving), otherwise `aborted` (the champion did not change). A rival blocked by a live pending
claim waits; it never guesses.

Failure cases, by design: a claimant waits for rivals at most half the lease and does not point
the alias once its claim is older than that, but a claimant paused for more than half the lease
(SIGSTOP, a VM freeze) *between* that check and pointing can still move the alias after a rival
settled its claim as an orphan; the lease (120 s) is far above a move's real duration (well under
a second). Clocks: claims carry the server's creation stamps. Once a claimant has appended its
claim, it ages its rivals and its own claim by the server's clock, run on from the stamp of its own
claim, so the claimants' clocks never enter the protocol. Before that (the orphans settled at the
start of a move, and `repair`), the store's `now_ms` stands in: on an MLflow server, this machine's
clock corrected by the server's `Date` header (about ±1 s). A store reached without a server (a
database URI used from several machines) is stamped by each writer's own clock, so there a clock
more than a few seconds off shortens or stretches those settlements' lease by as much. The
same-host shortcut (owner host:pid no longer running) assumes hostnames are unique to a process
namespace. Moves made outside tuneloop (the MLflow UI) are not in the ledger; the next claim
compares against the alias as it finds it, so they are overwritten only by a move that expected them.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Callable, Protocol

from tuneloop.errors import RegistryConflict, RegistryError

PENDING, DONE, LOST, ABORTED = "pending", "done", "lost", "aborted"
LIVE = (PENDING, DONE)
FIELDS = ("alias", "from", "to", "head", "kind", "actor", "reason", "run", "evidence", "owner", "status")
LEASE_SECONDS = 120.0
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Entry:
    """One claim: an attempted alias move, and what became of it."""

    number: int
    alias: str
    from_version: str | None
    to_version: str
    head: int
    kind: str  # promote | rollback | challenger
    actor: str
    reason: str
    run: str
    evidence: str
    status: str
    created_ms: int  # the server's clock, so times compare across machines
    owner: str = ""  # host:pid of the claimant, so a claim whose process died is settled without waiting

    @property
    def at(self) -> str:
        """The claim's time as ISO 8601 UTC."""
        return datetime.fromtimestamp(self.created_ms / 1000, timezone.utc).isoformat(timespec="milliseconds")

    def to_dict(self) -> dict:
        """Return a JSON-serializable form, with `from`/`to` spelled as the history shows them."""
        raw = asdict(self)
        raw["from"], raw["to"], raw["at"] = raw.pop("from_version"), raw.pop("to_version"), self.at
        return raw

    def tags(self) -> dict[str, str]:
        """The claim's fields as strings, for the store."""
        raw = self.to_dict()
        return {key: "" if raw[key] is None else str(raw[key]) for key in FIELDS}

    @classmethod
    def from_tags(cls, number: int, created_ms: int, tags: dict[str, str]) -> "Entry":
        """Rebuild a claim from the store's tags."""
        return cls(
            number=number, alias=tags.get("alias", ""), from_version=tags.get("from") or None, to_version=tags.get("to", ""),
            head=int(tags.get("head") or 0), kind=tags.get("kind", ""), actor=tags.get("actor", ""),
            reason=tags.get("reason", ""), run=tags.get("run", ""), evidence=tags.get("evidence", ""),
            status=tags.get("status", PENDING), created_ms=created_ms, owner=tags.get("owner", ""),
        )


def owner() -> str:
    """This process, as a claim records it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def gone(owner: str, created_ms: int) -> bool:
    """True when `owner` (host:pid) is a process on this host that no longer runs, or whose pid now
    belongs to a process started after `created_ms`."""
    import psutil

    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        # A reused pid belongs to a process that started after the claim was made.
        return psutil.Process(int(pid)).create_time() * 1000 > created_ms + 1000
    except psutil.NoSuchProcess:
        return True


class Store(Protocol):
    """What the ledger needs from a registry: ordered appends, mutable status tags, one alias."""

    def entries(self) -> list[Entry]:
        """Every claim, in number order."""

    def append(self, entry: Entry) -> Entry:
        """Append a claim; return it with the number and time the server assigned."""

    def mark(self, number: int, status: str) -> None:
        """Set a claim's status."""

    def alias(self, alias: str) -> str | None:
        """The version an alias points at, or None."""

    def point(self, alias: str, version: str) -> None:
        """Point an alias at a version."""

    def now_ms(self) -> int:
        """The current time, in the clock that stamps the claims."""


def history(entries: list[Entry], alias: str | None = None) -> list[Entry]:
    """The completed moves (oldest first), optionally of one alias."""
    return [e for e in entries if e.status == DONE and (alias is None or e.alias == alias)]


def head(entries: list[Entry], alias: str) -> int:
    """The number of the newest completed move of `alias`, or 0."""
    done = history(entries, alias)
    return done[-1].number if done else 0


def at(entries: list[Entry], alias: str, when_ms: int) -> Entry | None:
    """The completed move that set `alias` as it stood at `when_ms`, or None when it was unset."""
    before = [e for e in history(entries, alias) if e.created_ms <= when_ms]
    return before[-1] if before else None


def resolve_orphans(
    store: Store, entries: list[Entry], lease: float = LEASE_SECONDS, clock: Callable[[], int] | None = None,
) -> list[Entry]:
    """Settle every pending claim older than the lease (by `clock`, default the store's); return those settled."""
    settled = []
    now = (clock or store.now_ms)()
    for entry in entries:
        if entry.status != PENDING or (now - entry.created_ms < lease * 1000 and not gone(entry.owner, entry.created_ms)):
            continue
        current = store.alias(entry.alias)
        moved = current == entry.to_version and current != entry.from_version
        status = DONE if moved else ABORTED
        store.mark(entry.number, status)
        settled.append(replace(entry, status=status))
    return settled


def _server_clock(stamp_ms: int) -> Callable[[], int]:
    """The server's clock, run on from the stamp it just put on our claim: no skew, no extra request.

    The stamp was taken before the server answered, so this runs behind by the answer's latency
    (milliseconds): rivals look a little younger (waited for a little longer) and our own claim's
    age is short by as much, against the half lease (60 s) it is checked against.
    """
    start = time.monotonic()
    return lambda: stamp_ms + int((time.monotonic() - start) * 1000)


def _rivals(store: Store, claim: Entry, lease: float, wait: float, clock: Callable[[], int]) -> list[Entry]:
    """The live claims between the claimant's head and its claim, after waiting out pending ones."""
    deadline = time.monotonic() + wait
    while True:
        between = [e for e in store.entries() if e.alias == claim.alias and claim.head < e.number < claim.number]
        if resolve_orphans(store, between, lease, clock):
            continue  # settled some: look again
        live = [e for e in between if e.status in LIVE]
        if not any(e.status == PENDING for e in live) or any(e.status == DONE for e in live):
            return live
        if time.monotonic() >= deadline:
            return live
        time.sleep(POLL_SECONDS)


def _refusal(claim: Entry, first: Entry) -> RegistryConflict:
    if first.status == PENDING:
        return RegistryConflict(
            f"claim {first.number} ({first.from_version or 'unset'} -> {first.to_version}, by {first.owner or first.actor}) "
            f"is still pending; version {claim.to_version} was not made {claim.alias}, nothing was moved; "
            "retry after `tuneloop registry repair`"
        )
    return RegistryConflict(
        f"another move of {claim.alias} came first (claim {first.number}: {first.from_version or 'unset'} -> "
        f"{first.to_version}); version {claim.to_version} was not made {claim.alias}, nothing was moved; "
        "decide again against the new one (`tuneloop registry history`)"
    )


def move(store: Store, claim: Entry, expected: str | None, lease: float = LEASE_SECONDS) -> Entry:
    """Move `claim.alias` from `expected` to `claim.to_version`, or refuse; return the completed claim.

    `claim` carries the who/why/run/evidence; its number, head, from and status are filled in here.
    A claimant waits for pending rivals at most half the lease, and gives up when its own claim is
    older than that before it points the alias, so no rival can have settled it as an orphan.

    Raises:
        RegistryConflict: when the alias is not `expected` (nothing written), or a rival claim came
            first (this claim is marked lost; the alias is untouched).
        RegistryError: when the store fails; a claim already written is then marked aborted.
    """
    entries = store.entries()
    resolve_orphans(store, entries, lease)
    seen_head = head(store.entries(), claim.alias)
    current = store.alias(claim.alias)
    if current != expected:
        raise RegistryConflict(
            f"{claim.alias} is version {current or 'unset'}, not {expected or 'unset'} as expected for moving it to "
            f"{claim.to_version}; nothing was moved (look at `tuneloop registry history`, then decide again)"
        )
    mine = store.append(replace(claim, from_version=expected, head=seen_head, status=PENDING, owner=owner()))
    clock = _server_clock(mine.created_ms)
    pointed = False
    try:
        rivals = _rivals(store, mine, lease, lease / 2, clock)
        if rivals:
            store.mark(mine.number, LOST)
            raise _refusal(claim, rivals[0])
        if clock() - mine.created_ms >= lease * 500:
            store.mark(mine.number, ABORTED)
            raise RegistryConflict(f"claim {mine.number} waited past half its {lease:.0f} s lease; nothing was moved; try again")
        store.point(claim.alias, claim.to_version)
        pointed = True
        store.mark(mine.number, DONE)
    except BaseException:
        if not pointed:
            try:
                if next(e.status for e in store.entries() if e.number == mine.number) == PENDING:
                    store.mark(mine.number, ABORTED)
            except Exception:  # noqa: BLE001 - the store is failing: repair settles the claim later
                pass
        raise
    return replace(mine, status=DONE)
