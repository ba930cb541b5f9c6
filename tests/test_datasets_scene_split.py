"""Tests of the hash-based, scene-disjoint train/validation assignment."""

import pytest

from data_prep.datasets import scene_split


def test_hash_is_stable_across_processes_and_versions():
  # First 8 bytes of SHA-256(b'a0001') = 0x997970112ab40083, over 2^64.
  assert scene_split.scene_hash_unit('a0001') == 0x997970112ab40083 / 2.0**64


def test_assignment_ignores_order_and_matches_the_fraction():
  names = [f'scene{i}' for i in range(2000)]
  forward = scene_split.assign_splits(names, 0.1)
  backward = scene_split.assign_splits(reversed(names), 0.1)
  assert forward == backward
  share = sum(s == scene_split.VALIDATION for s in forward.values()) / 2000
  assert 0.08 < share < 0.12
  for name, split in forward.items():
    expected = (scene_split.VALIDATION
                if scene_split.scene_hash_unit(name) < 0.1 else
                scene_split.TRAIN)
    assert split == expected


def test_adding_scenes_keeps_existing_assignments():
  few = scene_split.assign_splits([f's{i}' for i in range(100)], 0.2)
  many = scene_split.assign_splits([f's{i}' for i in range(300)], 0.2)
  assert all(many[name] == split for name, split in few.items())


@pytest.mark.parametrize('fraction', [0.001, 0.999])
def test_two_scenes_always_give_both_splits(fraction):
  splits = scene_split.assign_splits(['alpha', 'beta'], fraction)
  assert sorted(splits.values()) == ['train', 'validation']


def test_single_scene_is_train_only():
  assert scene_split.assign_splits(['only'], 0.5) == {'only': 'train'}


def test_rejects_bad_fraction_and_duplicates():
  with pytest.raises(ValueError, match='validation_fraction'):
    scene_split.assign_splits(['a', 'b'], 0.0)
  with pytest.raises(ValueError, match='distinct'):
    scene_split.assign_splits(['a', 'a'], 0.1)
