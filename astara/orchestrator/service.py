"""astara-orchestrator: not built yet (the orchestrator issue); this stub says so."""

import sys


def main() -> int:
    print(
        "astara-orchestrator is not built yet: it lands with the orchestrator issue.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
