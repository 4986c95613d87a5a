#!/bin/bash
# 76's roaming and hub-by-name checks over IPv6 (issue 12 (g)): the hub at
# fd00:9::1, later fd00:9::11; n1 at fd00:9::2, later fd00:9::12. A shorter
# stream than 76's: the IPv4 run already carries the long one.
FAMILY=6
ROTOR_ROAM_DURATION=${ROTOR_ROAM_DURATION:-8}
. "$(dirname "$0")/76-daemon-roaming.sh"
