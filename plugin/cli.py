"""nvmf-phoenix command line."""
import sys


def main(argv: list[str] | None = None) -> int:
    print("nvmf-phoenix")
    return 0

if __name__ == "__main__":
    sys.exit(main())
