#!/bin/bash
# The region-loss fine-tune: evaluate its split checkpoint (not shipped; the patch and command are in README.md).
CK=${CK:?the region-loss split checkpoint} R=${R:-/tmp/issue20_region_loss} NAME=region_loss \
  RUNS="clicks_text clicks_only exact_mirror prompts_v3" bash "$(dirname "$0")/../evaluate_click_round.sh"
