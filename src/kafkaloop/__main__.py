import sys

from kafkaloop.cli import main

sys.exit(main())
