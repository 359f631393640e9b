#!/usr/bin/env bash
# The test command of the README: unit tests, property tests, openraft's storage suite, and the
# multi-process tests that run real `jm` binaries on 127.0.0.1 and SIGKILL them.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test "$@"
