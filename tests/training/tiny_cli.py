"""The start of a `train` command line for the tiny OpenVLA preset on the CPU, shared by the
training tests; each test adds its own batch size, rates and model options."""

TINY_OPENVLA_CPU = ["train", "--backend", "openvla", "--model", "tiny", "--image-size", "64x64", "--device", "cpu"]
