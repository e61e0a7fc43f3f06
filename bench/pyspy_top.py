"""Summarise py-spy raw stacks (`py-spy record --format raw`): where the samples of each thread went.

    python bench/pyspy_top.py FILE [--thread NAME] [--top 25] [--own]

Prints the samples per thread, then the frames with the most samples including what they call
(inclusive), or with `--own` the frames the samples were in (self time), each as a share of the
thread's samples. With `--idle` recordings, waiting threads show their waits (a `select`, a lock);
`--busy` leaves those samples out (paho's `select` is recognised by its line in paho 2.2).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_WAITS = re.compile(r"^(Condition\.wait|EpollSelector\.select|_worker \(concurrent|Event\.wait|"
                    r"Client\._loop \(paho/mqtt/client\.py:1667\)|Thread\.join|sleep)")


def parse(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread, frames outermost first, samples) per distinct stack."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = "?"
        while frames and (frames[0].startswith("thread ") or frames[0].startswith("process ")):
            head = frames.pop(0)
            if head.startswith("thread "):
                thread = head.split(": ", 1)[-1] if ": " in head else head
        stacks.append((thread, frames, int(count)))
    return stacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--thread", help="only the threads whose name contains this")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--own", action="store_true", help="self time instead of inclusive time")
    parser.add_argument("--busy", action="store_true",
                        help="leave out samples that wait (select, a condition, an idle worker): shares of the "
                             "thread's busy time")
    args = parser.parse_args()
    stacks = parse(args.file)
    if args.busy:
        stacks = [(thread, frames, count) for thread, frames, count in stacks
                  if not (frames and _WAITS.search(frames[-1]))]
    per_thread: Counter[str] = Counter()
    for thread, _, count in stacks:
        per_thread[thread] += count
    total = sum(per_thread.values())
    print(f"{total} samples")
    for thread, count in per_thread.most_common():
        print(f"  {count:>7}  {count / total:6.1%}  {thread}")
    for thread, thread_total in per_thread.most_common():
        if args.thread and args.thread not in thread:
            continue
        frames: Counter[str] = Counter()
        for name, stack, count in stacks:
            if name != thread:
                continue
            if args.own:
                frames[stack[-1] if stack else "?"] += count
            else:
                for frame in dict.fromkeys(stack):  # once per stack, however deep the recursion
                    frames[frame] += count
        print(f"\n{thread}: {thread_total} samples, {'self' if args.own else 'inclusive'}")
        for frame, count in frames.most_common(args.top):
            print(f"  {count / thread_total:6.1%}  {frame[:150]}")


if __name__ == "__main__":
    main()
