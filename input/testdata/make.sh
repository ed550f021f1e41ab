#!/usr/bin/env bash
# Regenerates the input package's own test file (the shared ones are in ../../testdata).
# mpeg25.mp3: 1 s of 440 Hz at 8 kHz mono, which is MPEG-2.5 Layer III.
set -euo pipefail
cd "$(dirname "$0")"
ffmpeg -nostdin -loglevel error -y -f lavfi -i "sine=frequency=440:sample_rate=8000:duration=1" \
  -ac 1 -c:a libmp3lame -b:a 16k -id3v2_version 0 -write_xing 0 mpeg25.mp3
