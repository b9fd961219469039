"""The converged linear probe: optimal where the answer is known, seeded, blind to the test set, and in agreement
with scikit-learn's logistic regression."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mochi_hvs.config.evaluators import LinearSettings
from mochi_hvs.evaluation.linear import probe_metrics
from mochi_hvs.evaluation.logistic import ProbeDataError, fit_logistic, validation_split


def gaussian_classes(means: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` points around each mean, identity covariance."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(means)).repeat_interleave(per_class)
    return means[labels] + torch.randn(len(labels), means.shape[1], generator=generator), labels


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return float((scores.argmax(dim=1) == labels).double().mean() * 100)


def test_separable_classes_are_all_classified():
    means = torch.tensor([[0.0, 0, 0], [12, 0, 0], [0, 12, 0], [0, 0, 12]])
    train, train_labels = gaussian_classes(means, 50, seed=0)
    test, test_labels = gaussian_classes(means, 200, seed=1)
    fit = fit_logistic(train, train_labels, 4, [1e-1, 1e-3], 0.2, seed=0)
    assert fit.converged and accuracy(fit.logits(test), test_labels) == 100.0


def test_noisy_classes_reach_the_bayes_rate():
    """Equal priors, identity covariance: the Bayes classifier is the nearest mean, a linear rule. On the same test
    sample, the probe's accuracy must match the Bayes classifier's within three standard errors of an accuracy
    measured on that many points."""
    means = torch.tensor([[0.0, 0, 0, 0, 0], [2, 0, 0, 0, 0], [1, 1.8, 0, 0, 0]])
    train, train_labels = gaussian_classes(means, 3000, seed=0)
    test, test_labels = gaussian_classes(means, 10000, seed=1)
    bayes = accuracy(-torch.cdist(test, means), test_labels)
    fit = fit_logistic(train, train_labels, 3, [1e-2, 1e-4], 0.1, seed=0)
    probe = accuracy(fit.logits(test), test_labels)
    p, n = bayes / 100, len(test_labels)
    tolerance = 3 * math.sqrt(p * (1 - p) / n) * 100
    assert 60 < bayes < 90  # noisy: far from both chance and separation
    assert fit.converged and abs(probe - bayes) <= tolerance, (probe, bayes, tolerance)


def test_the_solution_is_the_minimiser_of_the_stated_objective():
    """The solver's change of variables is exact: on standardised features, the returned weights give the objective
    it reports and a vanishing gradient of mean cross-entropy + lambda/2 ||W||^2, computed here by autograd in
    float64 on the untransformed problem."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 6, generator=generator) * torch.tensor([1, 10, 0.1, 3, 1, 50]) + 4
    features[:, 3] = features[:, 0] * 2 + features[:, 3] * 0.01  # nearly collinear columns: badly conditioned
    labels = (features[:, :3] @ torch.randn(3, 3, generator=generator)).argmax(dim=1)
    fit = fit_logistic(features, labels, 3, [1e-3], 0.1, seed=0, tolerance=1e-6)
    x = features.double()
    mean, std = x.mean(dim=0), x.std(dim=0, correction=0)
    weight = (fit.weight.double() * std).requires_grad_(True)  # the weights on standardised features
    bias = (fit.bias.double() + fit.weight.double() @ mean).requires_grad_(True)
    objective = F.cross_entropy((x - mean) / std @ weight.T + bias, labels) + 1e-3 / 2 * (weight ** 2).sum()
    objective.backward()
    assert fit.converged and not fit.path  # one strength: no search
    assert float(objective.detach()) == pytest.approx(fit.objective, abs=1e-5)
    assert float(torch.cat([weight.grad.flatten(), bias.grad]).abs().max()) < 1e-4


def test_one_seed_gives_one_result_and_another_seed_a_different_start_but_the_same_optimum():
    means = torch.tensor([[0.0, 0, 0], [2, 0, 0], [0, 2, 0]])
    train, labels = gaussian_classes(means, 200, seed=0)
    first, again = (fit_logistic(train, labels, 3, [1e-2], 0.1, seed=0, max_iter=3) for _ in range(2))
    other = fit_logistic(train, labels, 3, [1e-2], 0.1, seed=1, max_iter=3)
    assert torch.equal(first.weight, again.weight) and torch.equal(first.bias, again.bias)
    assert not torch.allclose(first.weight, other.weight)  # three iterations from different initial heads
    converged = [fit_logistic(train, labels, 3, [1e-2], 0.1, seed=seed, tolerance=1e-6) for seed in (0, 1)]
    assert all(fit.converged for fit in converged)
    assert torch.allclose(converged[0].weight, converged[1].weight, atol=1e-3)  # a strictly convex objective


def test_a_fit_that_runs_out_of_iterations_says_so():
    means = torch.tensor([[0.0, 0], [1, 0]])
    train, labels = gaussian_classes(means, 100, seed=0)
    fit = fit_logistic(train, labels, 2, [1e-4], 0.1, seed=0, max_iter=2)
    assert not fit.converged and fit.iterations == 2 and fit.gradient > 1e-4


def test_validation_split_is_stratified_disjoint_seeded_and_refuses_too_few_images():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    fit, val = validation_split(labels, 0.1, seed=0)
    assert len(val) == 10 and not set(fit) & set(val) and len(fit) + len(val) == 100
    assert np.bincount(labels[val]).tolist() == [1, 2, 3, 4]
    assert np.array_equal(validation_split(labels, 0.1, seed=0)[1], val)
    assert not np.array_equal(validation_split(labels, 0.1, seed=1)[1], val)
    assert np.bincount(labels[validation_split(labels[:20], 0.01, seed=0)[1]]).tolist() == [1, 1]  # one per class
    with pytest.raises(ProbeDataError, match="class 2 has 1"):
        validation_split(np.array([0, 0, 1, 1, 2]), 0.1, seed=0)


def test_the_test_labels_play_no_part_in_the_choice():
    """Poisoned test labels change the test accuracy and nothing else: the strength, the validation score and the
    fit are chosen on training images only."""
    means = torch.tensor([[0.0, 0, 0, 0], [1.5, 0, 0, 0], [0, 1.5, 0, 0]])
    train, train_labels = gaussian_classes(means, 300, seed=0)
    test, test_labels = gaussian_classes(means, 300, seed=1)
    poisoned = test_labels[torch.randperm(len(test_labels), generator=torch.Generator().manual_seed(2))]
    settings = LinearSettings(l2_grid=[1e-1, 1e-2, 1e-3, 1e-4])
    clean = probe_metrics(train, train_labels, test, test_labels, 3, settings)
    dirty = probe_metrics(train, train_labels, test, poisoned, 3, settings)
    assert clean["top1"] > 60 > dirty["top1"]
    assert {k: v for k, v in clean.items() if not k.startswith("top")} == \
        {k: v for k, v in dirty.items() if not k.startswith("top")}


@pytest.fixture(scope="module")
def pixels():
    """Raw pixel values in [0, 1] of 1,500 training and 1,000 test images of Fashion-MNIST (class-balanced)."""
    from mochi_hvs.data.datasets import labelled_splits

    train, test = labelled_splits("fashion_mnist", None, 1500, 1000, 0)

    def values(images):
        array = images.array.reshape(len(images), -1).astype(np.float32) / 255
        return torch.from_numpy(array), torch.from_numpy(images.labels.astype(np.int64))

    return (*values(train), *values(test))


def test_on_raw_pixels_the_probe_agrees_with_scikit_learn(pixels):
    """The probe chooses its strength on a validation split; scikit-learn's logistic regression with the same strength
    (C = 1 / (lambda * rows)) on the same standardised pixels reaches the same objective and a test top-1 within half
    a point."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train, train_labels, test, test_labels = pixels
    fit = fit_logistic(train, train_labels, 10, [1.0, 1e-1, 1e-2, 1e-3], 0.1, seed=0)
    scaler = StandardScaler().fit(train.numpy())
    reference = LogisticRegression(C=1 / (fit.l2 * len(train)), tol=1e-5, max_iter=5000)
    reference.fit(scaler.transform(train.numpy()), train_labels.numpy())
    standardised = torch.from_numpy(scaler.transform(train.numpy()))
    objective = float(F.cross_entropy(standardised @ torch.from_numpy(reference.coef_).T
                                      + torch.from_numpy(reference.intercept_), train_labels)
                      + fit.l2 / 2 * (torch.from_numpy(reference.coef_) ** 2).sum())
    ours = accuracy(fit.logits(test), test_labels)
    theirs = float((reference.predict(scaler.transform(test.numpy())) == test_labels.numpy()).mean() * 100)
    assert fit.converged and 1e-3 < fit.l2 < 1.0  # on 1,350 images the strength is neither extreme of the grid
    assert fit.objective == pytest.approx(objective, rel=2e-3)
    assert abs(ours - theirs) <= 0.5, (ours, theirs)
