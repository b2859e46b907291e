"""What a run's validation curve says, in one line, by explicit rules anyone can check.

    points = [ValidationPoint(step, epoch, loss, train_loss), ...]   oldest first
    best_point(points), evaluations_since_best(points)               the trainer's early stop uses these
    advise(points) -> Advice(rule, text, derivation)                 the dashboard's advice line

The validation loss is measured at fixed timesteps with fixed noise on held-out images
(engine.train.validation), so it moves only when the LoRA changes. Differences smaller
than `TOLERANCE` of the loss still count as no change: a few images at a few timesteps
estimate the loss only so finely. The rules (RULES_TEXT), first match wins.

Light module: the dashboard and `loradeck runs` use it.
"""
from __future__ import annotations

from dataclasses import dataclass

TOLERANCE = 0.005  # relative change that counts as a change
FLAT_EVALUATIONS = 3
RISING_EVALUATIONS = 2
GAP_EVALUATIONS = 3

RULES_TEXT = f"""\
  waiting     fewer than two evaluations
  flat        every evaluation within {TOLERANCE:.1%} of the first (at least {FLAT_EVALUATIONS} of them)
              -> the learning rate may be too low
  past_best   the lowest is {RISING_EVALUATIONS} or more evaluations back and the last is above it
              by more than {TOLERANCE:.1%} -> the best epoch's file
  memorising  the train-set loss falls while the validation loss does not, the gap
              widening over the last {GAP_EVALUATIONS} evaluations -> an earlier file, fewer epochs
  falling     the last evaluation is the lowest, or below the one before by more than
              {TOLERANCE:.1%} -> more epochs are likely to help
  levelled    otherwise -> more epochs are unlikely to help; the best file"""


@dataclass(frozen=True)
class ValidationPoint:
    step: int
    epoch: int
    loss: float
    train_loss: float | None = None


@dataclass(frozen=True)
class Advice:
    rule: str  # one of the rule names above
    text: str  # the advice line
    derivation: str  # how the rule matched, with the numbers (the dashboard's `?`)


def best_point(points: list[ValidationPoint]) -> ValidationPoint | None:
    """The evaluation with the lowest validation loss (the earliest of equal ones)."""
    best = None
    for point in points:
        if best is None or point.loss < best.loss:
            best = point
    return best


def evaluations_since_best(points: list[ValidationPoint]) -> int:
    best = best_point(points)
    return 0 if best is None else len(points) - 1 - points.index(best)


def _changed(new: float, old: float) -> bool:
    return abs(new - old) > TOLERANCE * abs(old)


def _where(point: ValidationPoint) -> str:
    return f"epoch {point.epoch}, step {point.step}"


def advise(points: list[ValidationPoint], best_file: str = "") -> Advice:
    """The advice for a validation curve; `best_file` names the best evaluation's LoRA file
    when there is one (the checkpoint saved at its step, or the run's -best file)."""
    if len(points) < 2:
        return Advice("waiting", "one evaluation so far: advice after the next" if points else "no validation yet",
                      "Advice needs at least two evaluations to compare.")
    first, last, best = points[0], points[-1], best_point(points)
    since = evaluations_since_best(points)
    numbers = (f"{len(points)} evaluations; first {first.loss:.5g} at {_where(first)}, lowest {best.loss:.5g} "
               f"at {_where(best)}, last {last.loss:.5g} at {_where(last)}; changes under "
               f"{TOLERANCE:.1%} count as none.")
    file_hint = f" ({best_file})" if best_file else ""

    spread = max(abs(p.loss - first.loss) for p in points)
    if len(points) >= FLAT_EVALUATIONS and spread <= TOLERANCE * abs(first.loss):
        return Advice(
            "flat", f"flat: validation loss moved under {TOLERANCE:.1%} in {len(points)} evaluations; "
            "the learning rate may be too low",
            f"Rule 'flat': every evaluation is within {TOLERANCE:.1%} of the first (largest change "
            f"{spread:.3g}). {numbers}")
    if since >= RISING_EVALUATIONS and _changed(last.loss, best.loss) and last.loss > best.loss:
        return Advice(
            "past_best", f"lowest at epoch {best.epoch}, higher in the {since} evaluations since: "
            f"epoch {best.epoch}'s file is the one to try{file_hint}",
            f"Rule 'past best': the lowest loss is {since} evaluations back (at least {RISING_EVALUATIONS}) and "
            f"the last is {last.loss - best.loss:.3g} above it. {numbers}")
    gaps = [p.loss - p.train_loss for p in points[-GAP_EVALUATIONS:] if p.train_loss is not None]
    recent = points[-GAP_EVALUATIONS:]
    if (len(gaps) == GAP_EVALUATIONS and all(b > a for a, b in zip(gaps, gaps[1:]))
            and _changed(gaps[-1], gaps[0]) and recent[-1].train_loss < recent[0].train_loss
            and not last.loss < recent[0].loss * (1 - TOLERANCE)):
        return Advice(
            "memorising", "memorising: the training images keep improving, the held-out ones do not; "
            f"try an earlier file{file_hint} or fewer epochs",
            f"Rule 'memorising': over the last {GAP_EVALUATIONS} evaluations the gap validation - train-set "
            f"widened ({', '.join(f'{g:.4g}' for g in gaps)}) while the validation loss did not fall. {numbers}")
    previous = points[-2]
    if since == 0 or (last.loss < previous.loss and _changed(last.loss, previous.loss)):
        return Advice(
            "falling", f"still falling at the last evaluation (epoch {last.epoch}): more epochs are likely to help",
            f"Rule 'falling': the last evaluation is the lowest so far, or below the one before by more than "
            f"{TOLERANCE:.1%} ({previous.loss:.5g} -> {last.loss:.5g}). {numbers}")
    return Advice(
        "levelled", f"levelled off: more epochs are unlikely to help; epoch {best.epoch}'s file is the lowest"
        f"{file_hint}",
        f"Rule 'levelled': no rule above matched; the last evaluation is within {TOLERANCE:.1%} of the one "
        f"before and not the lowest. {numbers}")




def explanation(advice: Advice) -> str:
    """The text behind the dashboard's `?`: what the numbers are, the rules, and which matched."""
    return (
        "Validation loss: the training loss of held-out images (never trained on) at fixed timesteps "
        "with fixed noise, so it moves only when the LoRA changes. The train-set loss is the same "
        "measure on a fixed sample of training images; a widening gap means memorising.\n\n"
        f"The advice is the first rule that matches:\n{RULES_TEXT}\n\n{advice.derivation}"
    )
