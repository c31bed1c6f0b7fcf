"""tasks/cli.py, the layer every task goes through: one way to end (a verdict line and its exit code), errors
caught once by their common base, Ctrl-C once, typed numbers and durations."""

from __future__ import annotations

import pytest
from invoke import Context, Exit

from infra.aws.session import AwsError
from infra.errors import PipelineError, Refusal
from infra.verdict import Verdict
from tasks.cli import Duration, Number, format_duration, pipeline_task


def end_of(body, capsys, **kwargs) -> tuple[int, str, str]:
    """Run ``body`` as a task; (exit code, stdout, stderr)."""
    wrapped = pipeline_task(help={}, interrupted="stopped; what it started was torn down",
                            types={"count": Number(1, 5, whole=True), "wait": Duration(0, 3600)})(body)
    try:
        wrapped(Context(), **kwargs)
        code = 0
    except Exit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("raised, code, line", [
    (Refusal("--ami 'x' is no AMI id; nothing was changed"), 2, "verdict: refused - --ami 'x' is no AMI id"),
    (PipelineError("packer build failed: No AMI was found"), 1, "verdict: failed - packer build failed"),
    (AwsError("the bake failed: boom", exit_code=1), 1, "verdict: failed - the bake failed: boom"),
    (AwsError("stack.certificate_arn is required"), 2, "verdict: refused - stack.certificate_arn is required"),
    (KeyboardInterrupt(), 130, "verdict: interrupted - stopped; what it started was torn down"),
])
def test_every_error_ends_as_one_verdict_line_with_its_exit_code(capsys, raised, code, line):
    def body(c, count=None, wait=None, json=False):
        raise raised

    exit_code, out, err = end_of(body, capsys)
    assert exit_code == code and out.strip().startswith(line), out
    assert out.count("verdict:") == 1 and not err


def test_every_error_class_of_the_pipeline_derives_from_the_one_base():
    from infra.aws.canary import CanaryFailed
    from infra.drill.run import DrillUsageError
    from infra.lane.lane import LaneUsageError
    from infra.localtwin.build import BuildError
    from infra.packer import PackerError
    from infra.rollout.outcome import Refused

    for error in (CanaryFailed, BuildError, PackerError, AwsError):
        assert issubclass(error, PipelineError), error
    for refusal in (DrillUsageError, LaneUsageError, Refused):
        assert refusal("x").exit_code == 2, refusal
    assert issubclass(BuildError, RuntimeError) and issubclass(DrillUsageError, ValueError), "built-in bases stay"


def test_a_returned_verdict_decides_the_exit_code_and_json_sends_the_line_to_stderr(capsys):
    def body(c, count=None, wait=None, json=False):
        print("{}" if json else "table")
        return Verdict("bake due", "a newer source AMI", 10)

    code, out, err = end_of(body, capsys, json=True)
    assert code == 10 and out == "{}\n" and err == "verdict: bake due - a newer source AMI\n"
    code, out, err = end_of(body, capsys)
    assert code == 10 and out == "table\nverdict: bake due - a newer source AMI\n" and not err


def test_typed_flags_reach_the_task_parsed_and_bad_ones_never_reach_it(capsys):
    seen = {}

    def body(c, count=None, wait=None, json=False):
        seen.update(count=count, wait=wait)
        return Verdict("done", "ok")

    assert end_of(body, capsys, count="3", wait="30m")[0] == 0 and seen == {"count": 3, "wait": 1800.0}

    def with_defaults(c, count="2", wait="1h", json=False):
        seen.update(count=count, wait=wait)

    assert end_of(with_defaults, capsys)[0] == 0 and seen == {"count": 2, "wait": 3600.0}, "defaults are typed too"
    seen.clear()
    code, out, _ = end_of(body, capsys, count="3.5")
    assert code == 2 and "verdict: refused - --count '3.5': must be a whole number from 1 to 5" in out
    code, out, _ = end_of(body, capsys, wait="2 hours")
    assert code == 2 and "verdict: refused - --wait '2 hours': must be a duration" in out and not seen


@pytest.mark.parametrize("text, seconds", [("1800", 1800), ("90s", 90), ("30m", 1800), ("1.5h", 5400),
                                           ("2d", 172800), ("1w", 604800), ("0s", 0)])
def test_durations(text, seconds):
    assert Duration(0, 10**7).parse("--t", text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5", "5 m", "5x", "1e3", "nan", "10h"])
def test_bad_durations(text):
    with pytest.raises(Refusal, match=r"--t '.*': must be a duration from 0s to 1h"):
        Duration(0, 3600).parse("--t", text)


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "0.05", "201", "five"])
def test_bad_numbers(text):
    with pytest.raises(Refusal, match=r"--rate '.*': must be a number from 0.1 to 200"):
        Number(0.1, 200).parse("--rate", text)


@pytest.mark.parametrize("seconds, text", [(21600, "6h"), (5400, "90m"), (0, "0s"), (90, "90s"), (172800, "2d")])
def test_a_duration_is_shown_in_its_largest_whole_unit(seconds, text):
    assert format_duration(seconds) == text and Duration(0, 10**7).parse("--t", text) == seconds


def test_the_local_services_errors_end_as_a_failed_verdict(capsys):
    """The local services' error derives from PipelineError: the same verdict by the one path, never a traceback."""
    from infra.localtwin.services import ServiceError

    assert issubclass(ServiceError, PipelineError)

    def body(c, count=None, wait=None, json=False):
        raise ServiceError("PostgreSQL did not start on 127.0.0.1:5433")

    code, out, _ = end_of(body, capsys)
    assert code == 1 and out.startswith("verdict: failed - PostgreSQL did not start"), out


def test_the_benchmarks_errors_are_pipeline_errors_a_bad_choice_refused(capsys):
    from infra.bench import BenchError
    from infra.bench.run import select_measurements

    assert issubclass(BenchError, PipelineError) and issubclass(BenchError, RuntimeError)

    def body(c, count=None, wait=None, json=False):
        raise BenchError("footprint: dumpe2fs failed")

    code, out, _ = end_of(body, capsys)
    assert code == 1 and out.startswith("verdict: failed - footprint: dumpe2fs failed"), out

    def refused(c, count=None, wait=None, json=False):
        select_measurements(["bared"])

    code, out, _ = end_of(refused, capsys)
    assert code == 2 and out.startswith("verdict: refused - --only 'bared': unknown measurement"), out
