#!/bin/bash
# The whole recipe from scratch: evaluate its split checkpoint (not shipped; the command is in the experiment log).
CK=${CK:?the from-scratch split checkpoint} R=${R:-/tmp/scratch_eval} NAME=scratch bash "$(dirname "$0")/../evaluate_click_round.sh"
