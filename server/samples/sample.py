"""A tiny module for `make demo`: codestral-ls completes the body of `average`."""


def average(numbers: list[float]) -> float:
    """Return the arithmetic mean of `numbers` (0.0 for an empty list)."""
    if not numbers:
        return 0.0
    return


def main() -> None:
    print(average([1.0, 2.0, 3.0]))


if __name__ == "__main__":
    main()
