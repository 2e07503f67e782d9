"""A tiny module for `make demo`: codestral-ls completes the marked line."""


def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return


def main() -> None:
    for i in range(10):
        print(i, fibonacci(i))


if __name__ == "__main__":
    main()
