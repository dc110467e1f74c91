"""llmcheck.distill.loss: soft targets at temperature T (times T^2) plus hard-label cross-entropy."""

import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import llmcheck  # noqa: E402
from llmcheck.distill import loss  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to a loaded machine's core contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_it_is_reachable_as_llmcheck_distill_without_importing_torch():
    assert llmcheck.distill.loss is loss
    code = "import sys, llmcheck; llmcheck.distill.loss; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_soft_part_is_zero_when_the_student_equals_the_teacher():
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 11, (2, 5))
    for temperature in (0.5, 1.0, 4.0):
        assert loss(logits, logits.clone(), None, temperature) == pytest.approx(0.0, abs=1e-6)
        assert loss(logits, logits.clone(), labels, temperature, alpha=1.0) == pytest.approx(0.0, abs=1e-6)
    hard = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1))
    assert loss(logits, logits.clone(), labels, 2.0, alpha=0.3) == pytest.approx(0.7 * float(hard), rel=1e-5)


def _softmax(xs, t):
    exps = [math.exp(x / t) for x in xs]
    return [e / sum(exps) for e in exps]


def test_it_matches_a_hand_computation_with_an_ignored_position():
    student = [[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [9.0, 9.0, 9.0]]
    teacher = [[2.0, 0.0, 1.0], [1.0, 1.0, -1.0], [0.0, 5.0, 0.0]]
    labels = [1, 2, -100]  # the third position is padding: left out of both parts
    temperature, alpha = 2.0, 0.25
    kls, ces = [], []
    for s, t, y in zip(student[:2], teacher[:2], labels[:2]):
        p_t, p_s = _softmax(t, temperature), _softmax(s, temperature)
        kls.append(sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s)))
        ces.append(-math.log(_softmax(s, 1.0)[y]))
    expected = alpha * temperature**2 * sum(kls) / 2 + (1 - alpha) * sum(ces) / 2
    got = loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), temperature, alpha)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_the_t_squared_factor_keeps_the_soft_gradient_scale_as_the_temperature_rises():
    # Hinton et al. 2015, section 2: the softened KL's gradient shrinks as 1/T^2; the T^2 factor undoes it.
    gen = torch.Generator().manual_seed(1)
    teacher, start = torch.randn(64, 50, generator=gen), torch.randn(64, 50, generator=gen) * 0.1
    norms = []
    for temperature in (8.0, 16.0):
        student = start.clone().requires_grad_()
        loss(student, teacher, None, temperature).backward()
        norms.append(float(student.grad.norm()))
    assert norms[1] == pytest.approx(norms[0], rel=0.1)


def test_the_teacher_gets_no_gradient():
    teacher = torch.randn(3, 7, requires_grad=True)
    student = torch.randn(3, 7, requires_grad=True)
    loss(student, teacher, torch.tensor([0, 1, 2]), 2.0).backward()
    assert teacher.grad is None and student.grad is not None


def test_it_trains_a_tiny_student_toward_its_teacher():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 20)).eval()
    with torch.no_grad():
        teacher[2].weight.mul_(5)  # confident predictions, as a trained teacher makes: a gap worth closing
    student = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 20))
    held_out = torch.randn(256, 16)

    def gap() -> float:
        with torch.no_grad():
            log_p, log_q = teacher(held_out).log_softmax(-1), student(held_out).log_softmax(-1)
        return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())

    before = gap()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(200):
        x = torch.randn(64, 16)
        with torch.no_grad():
            target = teacher(x)
        value = loss(student(x), target, target.argmax(-1), temperature=2.0, alpha=0.9)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert gap() < before / 5


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: loss(torch.zeros(2, 3), torch.zeros(2, 4)), "student logits [2, 3] and teacher logits [2, 4]"),
        (lambda: loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)), "labels [3] must match"),
        (lambda: loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0), "temperature = 0: expected a number > 0"),
        (lambda: loss(torch.zeros(2, 3), torch.zeros(2, 3), alpha=1.5), "alpha = 1.5: expected a weight in [0, 1]"),
        (lambda: loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.full((2,), -100)), "every label is ignore_index"),
    ],
)
def test_bad_arguments_say_what_was_passed(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value)
