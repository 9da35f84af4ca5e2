"""The input and output types of the PyBOINC example (the design's ``app_types.py``)."""


class Input:
    def __init__(self, arg):
        self.value = arg


class Output:
    def __init__(self, arg):
        self.value = arg
