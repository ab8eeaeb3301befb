"""``python -m nvmf_phoenix.embedded``: run the embedded target."""
import sys

from nvmf_phoenix.embedded.app import main

sys.exit(main())
