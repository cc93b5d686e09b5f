#!/bin/sh
# Stand-in for the node agent until kiln-agent exists: announces itself, then stays up.
echo "agent: started pid $$ (stand-in, no cluster configured)" > /dev/console
while :; do sleep 3600; done
