import math

import numpy as np
import pytest
import torch

from mochi_hvs.evaluation.few_shot import (
    Episode,
    TooFewImages,
    confidence_interval,
    few_shot_accuracy,
    prototype_accuracy,
    sample_episodes,
)

LABELS = np.repeat(np.arange(8), 30)  # 8 classes of 30 images


def test_episodes_have_exact_classes_shots_and_disjoint_queries():
    episodes = sample_episodes(LABELS, ways=5, shots=3, queries=4, episodes=50, seed=0)
    assert len(episodes) == 50
    for episode in episodes:
        assert len(set(episode.classes.tolist())) == 5
        assert episode.support.shape == (5, 3) and episode.query.shape == (5, 4)
        for row, cls in enumerate(episode.classes):
            assert (LABELS[episode.support[row]] == cls).all() and (LABELS[episode.query[row]] == cls).all()
        support, query = episode.support.ravel(), episode.query.ravel()
        assert len(set(support)) == 15 and len(set(query)) == 20 and not set(support) & set(query)
    assert len({tuple(e.classes) for e in episodes}) > 1  # the classes change between episodes


def test_episodes_are_fixed_by_the_seed():
    def drawn(seed):
        return [(e.classes.tolist(), e.support.tolist(), e.query.tolist())
                for e in sample_episodes(LABELS, 5, 1, 15, 20, seed)]

    assert drawn(0) == drawn(0)
    assert drawn(0) != drawn(1)


def test_only_classes_with_enough_images_take_part():
    labels = np.concatenate([np.repeat(np.arange(5), 20), np.full(5, 5)])  # class 5: 5 images, fewer than 1 + 15
    episodes = sample_episodes(labels, ways=5, shots=1, queries=15, episodes=30, seed=0)
    assert all(sorted(e.classes.tolist()) == [0, 1, 2, 3, 4] for e in episodes)
    with pytest.raises(TooFewImages, match="5 of 6 classes"):
        sample_episodes(labels, ways=6, shots=1, queries=15, episodes=1, seed=0)


def test_prototypes_separate_separable_features_and_guess_on_random_ones():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(40)
    separable = torch.nn.functional.one_hot(labels, 16).float() + 0.1 * torch.randn(400, 16, generator=generator)
    result = few_shot_accuracy(separable, labels, ways=5, shots=1, queries=15, episodes=100, seed=0)
    assert result.mean == 100.0 and result.interval == 0.0
    noise = torch.randn(400, 64, generator=generator)
    chance = few_shot_accuracy(noise, labels, ways=5, shots=5, queries=15, episodes=300, seed=0)
    assert 14 < chance.mean < 26 and chance.interval > 0  # 1/5 = 20%


def test_prototypes_are_means_of_normalised_support_features():
    # class 0's support: a long vector along x and a short one along y. The mean of the normalised vectors points
    # along the diagonal, which the class-0 query (0.6, 1) is nearer (cosine 0.97) than class 1's prototype (0, 1)
    # (0.86); the mean of the raw vectors, (5, 0.05), would lose it to class 1 (cosine 0.52).
    features = torch.tensor([[10.0, 0.0], [0.0, 0.1], [0.0, 1.0], [0.6, 1.0]])
    episode = Episode(np.array([0, 1]), np.array([[0, 1], [2, 2]]), np.array([[3], [2]]))
    assert prototype_accuracy(features, episode) == 100.0


def test_interval_is_1_96_standard_errors_of_the_episode_accuracies():
    assert confidence_interval(np.array([50.0, 60.0, 70.0, 80.0])) == pytest.approx(1.96 * math.sqrt(125) / 2)
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(6).repeat_interleave(25)
    features = torch.randn(150, 8, generator=generator) + torch.nn.functional.one_hot(labels, 8).float()
    result = few_shot_accuracy(features, labels, ways=5, shots=5, queries=15, episodes=40, seed=3)
    accuracies = np.array([prototype_accuracy(features, e)
                           for e in sample_episodes(labels.numpy(), 5, 5, 15, 40, seed=3)])
    assert result.mean == pytest.approx(accuracies.mean())
    std = np.sqrt(np.mean((accuracies - accuracies.mean()) ** 2))
    assert result.interval == pytest.approx(1.96 * std / np.sqrt(40))
    assert 0 < result.interval < result.mean
