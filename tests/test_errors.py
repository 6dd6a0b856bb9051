"""Project errors keep their one-paragraph message across processes."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import sc_fm.train.guards  # noqa: F401  (defines TrainingError)
from sc_fm.errors import ConfigError, InputDataError, ScFmError


def error_classes(cls=ScFmError) -> list[type]:
    return [cls] + [c for sub in cls.__subclasses__() for c in error_classes(sub)]


def test_every_error_class_is_found():
    names = {c.__name__ for c in error_classes()}
    assert {"ScFmError", "ConfigError", "InputDataError", "TrainingError"} <= names


@pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("parts", [("chunk 3 does not decode", "store.zarr", "re-run prepare"),
                                   ("only what", None, None)])
def test_pickle_round_trip(cls, parts):
    err = cls(*parts)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.what, back.where, back.fix, back.message, str(back)) == (*parts, err.message, str(err))


@pytest.mark.parametrize("cls", error_classes(), ids=lambda c: c.__name__)
def test_message_keyword_outside_a_worker_is_the_message(cls):
    assert cls(message="plain text").message == "plain text."


class Failing(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 2:
            raise InputDataError("chunk 7 of shard s1 does not decode (-1)", "/data/atlas.zarr",
                                 "the store is damaged: re-run `scfm prepare`")
        return torch.tensor(i)


def test_error_raised_in_a_dataloader_worker_arrives_intact():
    expected = ("/data/atlas.zarr: chunk 7 of shard s1 does not decode (-1). "
                "Fix: the store is damaged: re-run `scfm prepare`.")
    loader = DataLoader(Failing(), batch_size=None, num_workers=1)
    with pytest.raises(InputDataError) as err:
        list(loader)
    assert err.value.message == expected
    assert any("DataLoader worker" in note for note in getattr(err.value, "__notes__", []))


def test_config_error_from_a_spawned_worker_too():
    loader = DataLoader(FailingConfig(), batch_size=None, num_workers=1, multiprocessing_context="spawn")
    with pytest.raises(ConfigError) as err:
        list(loader)
    assert err.value.message == "config: data.block_cells=0 must be at least 1."


class FailingConfig(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise ConfigError("data.block_cells=0 must be at least 1", "config")
