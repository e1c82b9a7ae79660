"""Test-only: make torchvision accept the tiny fixture datasets.

torchvision checks the CIFAR-10 and MNIST files against the MD5 sums of the official
files, which a tiny fixture cannot match. swap_md5s puts the fixture's sums into
torchvision's own lists, so each script runs its normal code path (checks included).

This module has its own name so that the tests can import it even on a Python whose
own sitecustomize is already loaded (Debian's and Ubuntu's /usr/bin/python3 have one).
"""

import json
import os


def swap_md5s(md5s):
    from torchvision.datasets import CIFAR10, MNIST, FashionMNIST

    def swap(entries):
        return [(name, md5s.get(name, md5)) for name, md5 in entries]

    CIFAR10.train_list = swap(CIFAR10.train_list)
    CIFAR10.test_list = swap(CIFAR10.test_list)
    CIFAR10.meta = {**CIFAR10.meta, "md5": md5s.get(CIFAR10.meta["filename"], CIFAR10.meta["md5"])}
    MNIST.resources = swap(MNIST.resources)
    FashionMNIST.resources = swap(FashionMNIST.resources)


def swap_from_environment():
    """Swap in the sums of the JSON file named by FIXTURE_MD5S, if it is set."""
    if os.environ.get("FIXTURE_MD5S"):
        with open(os.environ["FIXTURE_MD5S"]) as f:
            swap_md5s(json.load(f))
