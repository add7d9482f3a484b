"""Score a batch of responses: route each by data_source, verify in parallel, never raise.

One `RewardManager` lives as long as the trainer: it owns a `VerifierPool` of child processes for
math / multiple choice / user functions (hard wall-clock kill per check) and a thread pool that
bounds how many code sandboxes run at once. Per sample it returns a float score and a
`RewardInfo`; timeouts, crashes and verifier errors score 0 and are counted in the batch metrics.

    with RewardManager(RewardConfig(math_workers=2)) as manager:
        batch = manager.score(responses, data_sources, ground_truths, extra_infos)
        batch.scores, batch.infos, batch.metrics

Routing follows verl's `default_compute_score` names (substring match on the lower-cased
data_source, first rule wins): gsm8k / aime / amc / memento_arith -> "number"; gpqa / mmlu ->
"choice"; codecontests / livecodebench / apps / taco / codeforces -> "code"; math / numina /
olympiad / dapo -> "math". `custom_function` replaces all of it (verl's custom_reward_function).
"""

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, Literal, Optional

from rewards.code import CodeResult, parse_tests, score_code
from rewards.format import FormatReport, check_format, format_reward
from rewards.pool import Call, Outcome, VerifierPool, load_function
from rewards.sandbox import ISOLATION_CHOICES, Isolation, SandboxLimits, SandboxUnavailable, resolve_isolation

VerifierKind = Literal["math", "number", "choice", "code", "custom", "none"]
Verdict = Literal["correct", "partial", "wrong", "no_answer", "timeout", "error"]
ErrorKind = Literal["verifier_timeout", "verifier_crash", "verifier_error", "bad_ground_truth",
                    "unknown_data_source"]

ROUTES: tuple[tuple[tuple[str, ...], VerifierKind], ...] = (
    (("gsm8k", "aime", "amc", "memento_arith"), "number"),
    (("gpqa", "mmlu"), "choice"),
    (("codecontests", "code_contests", "livecodebench", "apps", "taco", "codeforces"), "code"),
    (("math", "numina", "olympiad", "dapo"), "math"),
)
MAX_LOGGED_CHARS = 200
logger = logging.getLogger(__name__)


@dataclass
class RewardConfig:
    """Reward settings; a Hydra structured config can embed it (plain types, validated here)."""

    math_workers: int = 2  # child processes for math / choice / custom checks
    math_timeout_seconds: float = 10.0  # per check, then the worker is killed and replaced
    math_memory_mb: int = 4096  # address-space limit of each math worker
    code_workers: int = 2  # sandboxes running at once
    code_test_seconds: float = 6.0  # wall clock per test run (CPU limit: the same, rounded up)
    code_memory_mb: int = 1024
    code_sample_seconds: float = 60.0  # all tests of one response
    code_max_tests: Optional[int] = None  # run only the first N tests of a problem
    # "auto": the strongest of bwrap / namespaces / userns that works here (refuses code when none
    # does); or one of them by name; "insecure": no isolation (docs/sandbox.md), a warning and a metric
    sandbox_isolation: str = "auto"
    partial_credit: bool = False  # code: fraction of tests passed instead of all-or-nothing
    format_penalty: float = 0.0  # subtracted from malformed memento responses
    format_bonus: float = 0.0  # added to well-formed ones
    format_min_blocks: int = 1
    format_max_memento_ratio: float = 0.5
    custom_function: Optional[str] = None  # "pkg.module:fn" or "/path/file.py:fn", verl signature
    extra_routes: Dict[str, str] = field(default_factory=dict)  # data_source substring -> kind, checked first

    def __post_init__(self):
        for name in ("math_workers", "math_timeout_seconds", "math_memory_mb", "code_workers",
                     "code_test_seconds", "code_memory_mb", "code_sample_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"[reward.{name}] must be > 0, got {getattr(self, name)}")
        if self.code_max_tests is not None and self.code_max_tests <= 0:
            raise ValueError(f"[reward.code_max_tests] must be > 0 or null, got {self.code_max_tests}")
        if self.format_penalty < 0 or self.format_bonus < 0:
            raise ValueError("[reward.format_penalty / format_bonus] must be >= 0 (the sign is implied)")
        if self.sandbox_isolation not in ISOLATION_CHOICES:
            raise ValueError(f"[reward.sandbox_isolation] must be one of {ISOLATION_CHOICES}, "
                             f"got {self.sandbox_isolation!r}")
        kinds = {"math", "number", "choice", "code"}
        for key, kind in self.extra_routes.items():
            if kind not in kinds:
                raise ValueError(f"[reward.extra_routes.{key}] must be one of {sorted(kinds)}, got {kind!r}")


@dataclass(frozen=True)
class Verification:
    """What one verifier said about one response."""

    task_score: float  # 1.0 correct, 0.0 otherwise (a fraction for code with partial credit)
    verdict: Verdict
    extracted: str | None = None  # the answer or program found, first MAX_LOGGED_CHARS characters
    error: ErrorKind | None = None  # why the verifier itself failed; None when it ran
    message: str = ""  # detail for errors and the first failing code test
    seconds: float = 0.0  # verification time of this sample
    tests_passed: int = 0
    tests_total: int = 0


def _failed(error: ErrorKind, message: str, seconds: float = 0.0) -> Verification:
    verdict = "timeout" if error == "verifier_timeout" else "error"
    return Verification(0.0, verdict, error=error, message=message[:500], seconds=seconds)


@dataclass(frozen=True)
class RewardInfo(Verification):
    data_source: str = ""
    verifier: VerifierKind = "none"
    score: float = 0.0  # task_score + format reward
    format: FormatReport | None = None


@dataclass(frozen=True)
class RewardBatch:
    scores: list[float]  # [B]
    infos: list[RewardInfo]  # [B]
    metrics: dict[str, float]  # "reward/...", "format/..." means and counts for logging


def call_custom(spec: str, data_source: str, response: str, ground_truth: object, extra_info: dict | None) -> float:
    """Run a user reward function (verl signature) in a pool worker; a dict result needs "score"."""
    value = load_function(spec)(data_source, response, ground_truth, extra_info)
    value = value["score"] if isinstance(value, dict) else value
    score = float(value)
    if score != score:  # NaN
        raise ValueError("reward function returned NaN")
    return score


def _short(text: str | None) -> str | None:
    return None if text is None else text[:MAX_LOGGED_CHARS]


class RewardManager:
    def __init__(self, config: RewardConfig | None = None):
        self.config = config or RewardConfig()
        if self.config.custom_function:
            load_function(self.config.custom_function)  # a bad path fails here, not on every sample
        self.pool = VerifierPool(self.config.math_workers, self.config.math_timeout_seconds,
                                 self.config.math_memory_mb, preload=("math_verify", "rewards.math"))
        self._threads = ThreadPoolExecutor(self.config.code_workers, thread_name_prefix="reward-code")
        self.sandbox_isolation, self._sandbox_error = self._probe_sandbox()
        cpu = max(1, int(self.config.code_test_seconds + 0.999))
        self.sandbox_limits = SandboxLimits(wall_seconds=self.config.code_test_seconds, cpu_seconds=cpu,
                                            memory_mb=self.config.code_memory_mb,
                                            isolation=self.sandbox_isolation or self.config.sandbox_isolation)

    def _probe_sandbox(self) -> tuple[Isolation | None, str]:
        """The isolation code runs under (probed once, logged), or None and why none works."""
        try:
            isolation = resolve_isolation(self.config.sandbox_isolation)
        except SandboxUnavailable as e:
            logger.error("code rewards are disabled: %s", e)
            return None, str(e)
        if isolation == "insecure":
            logger.warning("reward.sandbox_isolation=insecure: code from the policy runs WITHOUT isolation; "
                           "it can read and change anything this trainer can (docs/sandbox.md)")
        else:
            logger.info("code rewards run in the %r sandbox", isolation)
        return isolation, ""

    def route(self, data_source: str) -> VerifierKind:
        if self.config.custom_function:
            return "custom"
        source = str(data_source).lower()
        for key, kind in self.config.extra_routes.items():
            if key.lower() in source:
                return kind  # type: ignore[return-value]
        for keys, kind in ROUTES:
            if any(key in source for key in keys):
                return kind
        return "none"

    def score(self, responses: list[str], data_sources: list[str], ground_truths: list,
              extra_infos: list[dict | None] | None = None) -> RewardBatch:
        """Score B responses. Raises on mismatched list lengths (a caller bug) and on code samples when
        no sandbox works on this host (SandboxUnavailable, saying how to fix it), never on content."""
        extra_infos = extra_infos if extra_infos is not None else [None] * len(responses)
        if not len(responses) == len(data_sources) == len(ground_truths) == len(extra_infos):
            raise ValueError(f"batch lengths differ: {len(responses)} responses, {len(data_sources)} data_sources, "
                             f"{len(ground_truths)} ground_truths, {len(extra_infos)} extra_infos")
        responses = [r if isinstance(r, str) else "" if r is None else str(r) for r in responses]
        kinds = [self.route(source) for source in data_sources]
        if "code" in kinds and self.sandbox_isolation is None:
            raise SandboxUnavailable(self._sandbox_error)  # fail closed: never run policy code unisolated
        code_futures = {i: self._threads.submit(self._score_code, responses[i], ground_truths[i], extra_infos[i])
                        for i, kind in enumerate(kinds) if kind == "code"}
        pool_indices = [i for i, kind in enumerate(kinds) if kind in ("math", "number", "choice", "custom")]
        outcomes = dict(zip(pool_indices, self.pool.run([self._call(i, kinds[i], responses, data_sources,
                                                                    ground_truths, extra_infos) for i in pool_indices])))
        infos = []
        for i, kind in enumerate(kinds):
            fmt = check_format(responses[i], self.config.format_min_blocks, self.config.format_max_memento_ratio)
            if kind == "code":
                verification = self._code_verification(code_futures[i])
            elif kind == "none":
                verification = _failed("unknown_data_source", f"no verifier for {data_sources[i]!r}")
            else:
                verification = self._pool_verification(kind, outcomes[i])
            bonus = format_reward(fmt, self.config.format_penalty, self.config.format_bonus)
            infos.append(RewardInfo(**vars(verification), data_source=str(data_sources[i]), verifier=kind,
                                    score=verification.task_score + bonus, format=fmt))
        metrics = batch_metrics(infos)
        metrics["reward/sandbox_insecure"] = float(self.sandbox_isolation == "insecure")
        return RewardBatch([info.score for info in infos], infos, metrics)

    def _call(self, i: int, kind: VerifierKind, responses, data_sources, ground_truths, extra_infos) -> Call:
        if kind == "custom":
            return Call("rewards.manager:call_custom", (self.config.custom_function, data_sources[i], responses[i],
                                                        ground_truths[i], extra_infos[i]))
        return Call("rewards.math:score_math", (responses[i], ground_truths[i], kind))

    @staticmethod
    def _pool_verification(kind: VerifierKind, outcome: Outcome) -> Verification:
        if outcome.status != "ok":
            error = {"timeout": "verifier_timeout", "crash": "verifier_crash"}.get(outcome.status, "verifier_error")
            return _failed(error, outcome.error, outcome.seconds)  # type: ignore[arg-type]
        if kind == "custom":
            value = outcome.value
            return Verification(value, "correct" if value > 0 else "wrong", seconds=outcome.seconds)
        result = outcome.value
        verdict = "correct" if result.correct else "wrong" if result.extracted is not None else "no_answer"
        return Verification(float(result.correct), verdict, _short(result.extracted), seconds=outcome.seconds)

    def _score_code(self, response: str, ground_truth: object, extra_info: dict | None) -> Verification:
        start = time.monotonic()
        try:
            tests = parse_tests(ground_truth, extra_info)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            return _failed("bad_ground_truth", f"{type(e).__name__}: {e}")
        result: CodeResult = score_code(response, tests, self.sandbox_limits, self.config.partial_credit,
                                        self.config.code_sample_seconds, self.config.code_max_tests)
        if self.config.partial_credit:
            task_score = result.passed / result.total
        else:
            task_score = float(result.verdict == "correct")
        return Verification(task_score, result.verdict, _short(result.program), None, result.first_failure,
                            time.monotonic() - start, result.passed, result.total)

    @staticmethod
    def _code_verification(future: Future) -> Verification:
        try:
            return future.result()
        except Exception as e:  # noqa: BLE001 - a host-side failure scores 0, it never stops training
            return _failed("verifier_error", f"{type(e).__name__}: {e}")

    def close(self) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        self.pool.close()

    def __enter__(self) -> "RewardManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def batch_metrics(infos: list[RewardInfo]) -> dict[str, float]:
    """Means over the batch plus counts of timeouts and errors (keys as logged to wandb)."""
    n = max(len(infos), 1)
    metrics = {
        "reward/score_mean": sum(i.score for i in infos) / n,
        "reward/accuracy": sum(i.verdict == "correct" for i in infos) / n,
        "reward/no_answer_frac": sum(i.verdict == "no_answer" for i in infos) / n,
        "reward/timeouts": float(sum(i.verdict == "timeout" for i in infos)),
        "reward/verifier_timeouts": float(sum(i.error == "verifier_timeout" for i in infos)),
        "reward/crashes": float(sum(i.error == "verifier_crash" for i in infos)),
        "reward/errors": float(sum(i.error is not None for i in infos)),
        "reward/seconds_mean": sum(i.seconds for i in infos) / n,
        "reward/seconds_max": max((i.seconds for i in infos), default=0.0),
        "format/well_formed_frac": sum(i.format.well_formed for i in infos) / n,
        "format/blocks_mean": sum(i.format.blocks for i in infos) / n,
    }
    with_blocks = [i.format.memento_ratio for i in infos if i.format.blocks]
    metrics["format/memento_ratio_mean"] = sum(with_blocks) / len(with_blocks) if with_blocks else 0.0
    for kind in sorted({i.verifier for i in infos}):
        group = [i for i in infos if i.verifier == kind]
        metrics[f"reward/{kind}/accuracy"] = sum(i.verdict == "correct" for i in group) / len(group)
    return metrics
