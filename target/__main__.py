"""``python -m nvmf_phoenix.target``: run the embedded target."""
import sys

from nvmf_phoenix.target.app import main

sys.exit(main())
