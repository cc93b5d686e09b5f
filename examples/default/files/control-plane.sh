#!/bin/sh
# Stand-in for the control-plane binary: announces itself, then stays up.
echo "control-plane: started pid $$ (stand-in)" > /dev/console
mkdir -p /var/lib/control-plane
echo "$$" >> /var/lib/control-plane/starts
while :; do sleep 3600; done
