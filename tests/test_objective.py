"""meta.objective: the expected one-step change of a held-out loss, checked against a Monte-Carlo average of
explicit ZO steps on quadratic losses (where the second-order expansion and the SPSA estimate are exact)."""
import torch

from meta.objective import allocation_gradient, block_terms, expected_change


def quadratic_pair(seed=0, diagonal=False):
    """Two blocks (a 3x2 matrix and a 4-vector, 10 parameters); L_train = 1/2 (x-c1)'P(x-c1) and
    L_held = 1/2 (x-c2)'Q(x-c2) with Q coupling the blocks (or diagonal), all float64."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    M, N = torch.randn(10, 10, generator=g, dtype=torch.float64), torch.randn(10, 10, generator=g, dtype=torch.float64)
    P, Q = M @ M.T / 10 + torch.eye(10, dtype=torch.float64), N @ N.T / 10 + 0.5 * torch.eye(10, dtype=torch.float64)
    if diagonal:
        Q = torch.diag(torch.diagonal(Q))
    c1, c2 = torch.randn(10, generator=g, dtype=torch.float64), torch.randn(10, generator=g, dtype=torch.float64)
    x = lambda: torch.cat([w.flatten(), b])  # noqa: E731
    train = lambda: 0.5 * (x() - c1) @ P @ (x() - c1)  # noqa: E731
    held = lambda: 0.5 * (x() - c2) @ Q @ (x() - c2)  # noqa: E731
    return [w, b], train, held, (P, Q, c1, c2, x().detach())


def test_expected_change_matches_the_average_of_explicit_zo_steps():
    params, train, held, (P, Q, c1, c2, x0) = quadratic_pair()
    s2 = torch.tensor([0.3, 2.0], dtype=torch.float64)
    scale = torch.cat([torch.full((6,), s2[0].sqrt()), torch.full((4,), s2[1].sqrt())]).double()
    terms = block_terms(params, train, held, probes=1)
    terms.trace = torch.tensor([torch.diagonal(Q)[:6].sum(), torch.diagonal(Q)[6:].sum()], dtype=torch.float64)
    eta, eps = 0.05, 1e-3
    gen = torch.Generator().manual_seed(1)
    total, n_draws = 0.0, 0
    for _ in range(20):
        z = torch.randn(50_000, 10, generator=gen, dtype=torch.float64) * scale
        f = lambda y: 0.5 * (((y - c1) @ P) * (y - c1)).sum(-1)  # noqa: E731
        g = (f(x0 + eps * z) - f(x0 - eps * z)) / (2 * eps)  # the two-point estimate, explicitly
        x1 = x0 - eta * g[:, None] * z
        h = lambda y: 0.5 * (((y - c2) @ Q) * (y - c2)).sum(-1)  # noqa: E731
        total += float((h(x1) - h(x0)).sum())
        n_draws += len(z)
    monte_carlo = total / n_draws
    predicted = expected_change(terms, s2, eta)["change"]
    assert abs(predicted - monte_carlo) < 0.02 * abs(predicted) + 1e-4, (predicted, monte_carlo)


def test_terms_by_hand_and_the_best_step():
    params, train, held, (P, Q, c1, c2, x0) = quadratic_pair(seed=2)
    a, h = P @ (x0 - c1), Q @ (x0 - c2)
    terms = block_terms(params, train, held, probes=1)
    assert torch.allclose(terms.dot, torch.stack([a[:6] @ h[:6], a[6:] @ h[6:]]))
    assert torch.allclose(terms.sq, torch.stack([a[:6] @ a[:6], a[6:] @ a[6:]]))
    terms.trace = torch.tensor([torch.diagonal(Q)[:6].sum(), torch.diagonal(Q)[6:].sum()], dtype=torch.float64)
    s2 = torch.tensor([1.5, 0.2], dtype=torch.float64)
    w = torch.cat([s2[0] * a[:6], s2[1] * a[6:]])
    out = expected_change(terms, s2)
    assert abs(out["A"] - float((s2 * terms.dot).sum())) < 1e-12
    assert abs(out["C"] - float((s2 * terms.sq).sum() * (s2 * terms.trace).sum() + 2 * w @ Q @ w)) < 1e-9
    if out["eta_star"] is not None:
        best = out["change"]
        for factor in (0.5, 0.9, 1.1, 2.0):
            assert expected_change(terms, s2, out["eta_star"] * factor)["change"] > best


def test_hutchinson_traces():
    """Rademacher probes give each block's trace exactly when the Hessian is diagonal, and on average when the
    blocks are coupled."""
    params, train, held, (_, Q, *_) = quadratic_pair(diagonal=True)
    exact = torch.stack([torch.diagonal(Q)[:6].sum(), torch.diagonal(Q)[6:].sum()])
    assert torch.allclose(block_terms(params, train, held, probes=1).trace, exact)
    params, train, held, (_, Q, *_) = quadratic_pair()
    exact = torch.stack([torch.diagonal(Q)[:6].sum(), torch.diagonal(Q)[6:].sum()])
    estimate = block_terms(params, train, held, probes=4000, generator=torch.Generator().manual_seed(0)).trace
    assert torch.allclose(estimate, exact, rtol=0.05), (estimate, exact)


def test_allocation_gradient_matches_finite_differences_of_the_objective():
    """The objective is quadratic in s^2 for fixed terms, so central differences of expected_change are exact up
    to rounding: an independent reference for every term of the gradient, the coupled Hessian's included."""
    params, train, held, (_, Q, *_) = quadratic_pair(seed=3)
    terms = block_terms(params, train, held, probes=3, generator=torch.Generator().manual_seed(0))
    s2 = torch.tensor([0.7, 1.8], dtype=torch.float64)
    for eta in (0.05, 0.4):
        grad = allocation_gradient(terms, s2, eta)
        for b in range(2):
            step = torch.zeros(2, dtype=torch.float64)
            step[b] = 1e-3
            fd = (expected_change(terms, s2 + step, eta)["change"]
                  - expected_change(terms, s2 - step, eta)["change"]) / 2e-3
            assert abs(float(grad[b]) - fd) < 1e-8 * max(1.0, abs(fd)), (eta, b, float(grad[b]), fd)
        # the curvature part matters here: the first-order part alone is far off at the larger step
        assert eta < 0.1 or not torch.allclose(grad, -eta * terms.dot, rtol=0.05)
