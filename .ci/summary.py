"""The closing lines of `.ci/run`, which runs the tests as several pytest processes: the slowest tests of all of
them and one summary line in pytest's own format, from the JUnit XML files each process wrote.

    python3 .ci/summary.py SECONDS REPORT.xml...

SECONDS is the wall time of the whole run. Exits 1 when a test failed or errored, else 0.
"""

import datetime
import os
import sys
import xml.etree.ElementTree as ET

SLOWEST = 15


def read(paths):
    """[(seconds, test id, outcome)] of every test case in the reports."""
    cases = []
    for path in paths:
        if not os.path.exists(path):  # a group killed before it wrote its report (its exit status fails the run)
            continue
        for case in ET.parse(path).getroot().iter("testcase"):
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
            test_id = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
            cases.append((float(case.get("time", 0)), test_id, outcome))
    return cases


def summary_line(counts, seconds):
    """pytest's last line, e.g. '===== 310 passed, 2 skipped in 612.03s (0:10:12) ====='."""
    order = ["failed", "passed", "skipped", "error"]
    words = ", ".join(f"{counts[k]} {'errors' if k == 'error' and counts[k] > 1 else k}" for k in order if counts[k])
    text = f" {words or 'no tests ran'} in {seconds:.2f}s ({datetime.timedelta(seconds=int(seconds))}) "
    return text.center(80, "=")


def main(argv):
    seconds, paths = float(argv[0]), argv[1:]
    cases = read(paths)
    print(f"\n{f' slowest {SLOWEST} tests of all groups (setup + call + teardown) ':=^80}")
    for time, test_id, _ in sorted(cases, reverse=True)[:SLOWEST]:
        print(f"{time:.2f}s {test_id}")
    counts = {k: sum(outcome == k for *_, outcome in cases) for k in ("failed", "passed", "skipped", "error")}
    print(summary_line(counts, seconds))
    return 1 if counts["failed"] or counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
