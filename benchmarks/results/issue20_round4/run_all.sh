#!/bin/bash
# Round 4: evaluate the fine-tuned split checkpoint (not shipped; train it with the command in the experiment log).
CK=${CK:?the round-4 split checkpoint} R=$(dirname "$0") NAME=round4 bash "$(dirname "$0")/../evaluate_click_round.sh"
