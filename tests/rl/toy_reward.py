"""A trivially learnable reward for trainer tests: the share of response characters that are digits."""


def digit_share(data_source, solution_str, ground_truth, extra_info=None):
    text = solution_str.split("<|im_end|>")[0]
    return sum(ch.isdigit() for ch in text) / max(len(text), 1)
