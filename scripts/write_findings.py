"""Write the README's "findings" paragraph from a results folder, so its sentences cannot drift from the numbers.

    python scripts/write_findings.py [--results results] [--readme README.md] [--check]

A thin wrapper over :func:`riskdecomp.report.findings.findings` (the same text opens the report): it replaces the
text between ``<!-- findings:start -->`` and ``<!-- findings:end -->`` in the README. ``--check`` writes nothing
and exits 1 when the README's paragraph differs from what the results say. Errors in percent, differences in
percentage points; every CI is 95 %.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from riskdecomp.report.findings import findings

START, END = "<!-- findings:start -->", "<!-- findings:end -->"
ROOT = Path(__file__).resolve().parents[1]


def replace(readme_text: str, paragraph: str) -> str:
    if START not in readme_text or END not in readme_text:
        raise SystemExit(f"README has no {START} ... {END} markers")
    head, rest = readme_text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{paragraph}{END}{tail}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=ROOT / "results")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if the README is not up to date; write nothing")
    a = ap.parse_args(argv)
    if not (a.results / "leaderboard.csv").is_file():
        raise SystemExit(f"{a.results / 'leaderboard.csv'}: missing (write_findings reads a results folder)")
    text = a.readme.read_text()
    new = replace(text, findings(a.results))
    if a.check:
        if new != text:
            print(f"{a.readme}: the findings paragraph differs from {a.results}; run scripts/write_findings.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        a.readme.write_text(new)
    print(f"wrote the findings of {a.results} into {a.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
