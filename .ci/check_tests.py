"""CI guard: the test run must cover every test file and at least the committed number of tests.

Reads the JUnit XML that pytest wrote (``.ci/run`` sets ``--junitxml``) and compares it with the repository:
- every ``tests/**/test_*.py`` file must have contributed at least one test case (a file that failed to be
  collected, or whose tests were all renamed away, is caught);
- the number of test cases must be at least ``tests/EXPECTED_TESTS`` (a deleted test or test file is caught).
Raise the number deliberately, in the same commit, when tests are added (``python .ci/check_tests.py --count
JUNIT`` prints the current count). Exit 1 with one line per problem.
"""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cases(junit: Path) -> list:
    root = ET.parse(junit).getroot()
    return [tc for tc in root.iter("testcase")]


def module_of(tc) -> str:
    # pytest writes classname "tests.journeys.test_x.TestClass" or "tests.test_x"; file attr is not always present
    parts = (tc.get("classname") or "").split(".")
    for i in range(len(parts), 0, -1):
        cand = ROOT.joinpath(*parts[:i]).with_suffix(".py")
        if cand.is_file():
            return str(cand.relative_to(ROOT))
    return ""


def main(argv) -> int:
    if len(argv) == 3 and argv[1] == "--count":
        print(len(cases(Path(argv[2]))))
        return 0
    if len(argv) != 2:
        print("usage: check_tests.py JUNIT_XML | --count JUNIT_XML")
        return 2
    junit = Path(argv[1])
    if not junit.is_file():
        print(f"ci: no JUnit report at {junit}: the test runner did not finish")
        return 1
    tcs = cases(junit)
    seen = {module_of(tc) for tc in tcs}
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py"))
    problems = [f"ci: {f} contributed no test case (not collected?)" for f in files if f not in seen]
    expected = int((ROOT / "tests" / "EXPECTED_TESTS").read_text().split()[0])
    if len(tcs) < expected:
        problems.append(f"ci: only {len(tcs)} tests ran, fewer than the committed {expected} "
                        "(tests/EXPECTED_TESTS): a test was deleted or not collected")
    for p in problems:
        print(p)
    if not problems:
        print(f"ci: {len(tcs)} tests from {len(files)} files ran (expected at least {expected})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
