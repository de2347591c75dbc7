#!/usr/bin/env bash
# Fails when vendor/mistralrs-core is not exactly the pinned registry crate + vendor/patches.
exec "$(dirname "$0")/update.sh" --check
