"""resolve_device: every torch device string plus auto, checked against what the machine has; --device's errors."""

import argparse

import pytest
import torch

from fewshot_l2l.devices import device_argument
from fewshot_l2l.devices import resolve_device


def test_auto_is_cuda_when_available_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("name, expected", [("cpu", torch.device("cpu")), ("cpu:0", torch.device("cpu")),
                                            (torch.device("cpu", 0), torch.device("cpu"))])
def test_cpu_in_every_spelling(name, expected):
    assert resolve_device(name) == expected and resolve_device(name).index is None  # torch.load refuses cpu:0


def test_accelerators_are_accepted_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(RuntimeError, match=r"device 'cuda:2': this machine has 2 cuda device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "device_count", lambda: 1)
    assert resolve_device("mps") == torch.device("mps")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "mps", "xpu"])
def test_missing_accelerator_names_what_the_machine_has(monkeypatch, name):
    for backend in (torch.cuda, torch.mps, torch.xpu):
        monkeypatch.setattr(backend, "is_available", lambda: False)
    kind = name.split(":")[0]
    with pytest.raises(RuntimeError, match=rf"device '{name}': no {kind} device is available on this machine \(available: cpu; or use auto\)"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "CPU"])
def test_not_a_device(name):
    with pytest.raises(ValueError, match=rf"device '{name}' is not a device: use auto, cpu, cuda, cuda:N, mps"):
        resolve_device(name)


def test_backend_without_availability_query_is_tried():
    with pytest.raises(RuntimeError, match=r"device 'ipu' is not usable with this PyTorch build: Could not run"):
        resolve_device("ipu")


def test_device_argumentument_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(torch.mps, "is_available", lambda: False)
    assert device_argument("cpu:0") == "cpu:0"  # as given: stored in the run's config
    with pytest.raises(argparse.ArgumentTypeError, match="device 'mps': no mps device is available"):
        device_argument("mps")
