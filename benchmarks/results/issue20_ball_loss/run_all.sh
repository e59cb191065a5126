#!/bin/bash
# The ball-loss fine-tune: evaluate its split checkpoint (not shipped; the patch and command are in README.md).
CK=${CK:?the ball-loss split checkpoint} R=${R:-/tmp/issue20_ball_loss} NAME=ball_loss \
  RUNS="clicks_text clicks_only exact_mirror prompts_v3" bash "$(dirname "$0")/../evaluate_click_round.sh"
