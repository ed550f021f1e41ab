#!/usr/bin/env bash
# Regenerates the test MP3 files in this folder with real encoders.
# Needs: ffmpeg, lame, sox, espeak-ng (apt-get install -y ffmpeg lame sox libsox-fmt-mp3 espeak-ng).
# The files are committed; this script documents exactly how they were made.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# Music-like material: a chord with a slow tremolo, so the encoder uses its bit reservoir.
music='sine=frequency=440:sample_rate=44100:duration=8[a];sine=frequency=554.37:sample_rate=44100:duration=8[b];sine=frequency=659.25:sample_rate=44100:duration=8[c];[a][b][c]amix=inputs=3,tremolo=f=3:d=0.5,aformat=channel_layouts=stereo'

# 1. CBR 128k, 44.1 kHz stereo, no ID3, no Xing.
ffmpeg -nostdin -loglevel error -y -filter_complex "$music" -c:a libmp3lame -b:a 128k \
  -id3v2_version 0 -write_xing 0 -map_metadata -1 cbr128.mp3

# 2. VBR with an ID3v2 tag and a Xing frame (ffmpeg writes both by default).
ffmpeg -nostdin -loglevel error -y -filter_complex "$music" -c:a libmp3lame -q:a 2 \
  -metadata title="VBR test" -metadata artist="p2pradio" vbr_id3_xing.mp3

# 3. 22.05 kHz mono: MPEG-2 Layer III, made by lame from sox noise-shaped tones.
sox -n -r 22050 -c 1 "$tmp/mono22.wav" synth 6 sine 300-900 sine 1200 remix - gain -6
lame --quiet -b 48 -m m "$tmp/mono22.wav" mono22k.mp3

# 4. Speech: espeak-ng (22.05 kHz mono), encoded by lame VBR, with an ID3v1 tag at the end.
espeak-ng -w "$tmp/speech.wav" "This is a test of the peer to peer radio relay. Every listener relays the stream to two others, so one small uplink serves thousands."

lame --quiet -V 2 --id3v1-only --tt "Speech test" "$tmp/speech.wav" speech.mp3

# 5. Junk between frames: the CBR file with random bytes spliced in at three frame boundaries.
python3 - <<'PY'
import random
random.seed(7)
data = open("cbr128.mp3", "rb").read()
# 128 kbit/s at 44.1 kHz: frames of 417 or 418 bytes; find boundaries by scanning sync words.
def frames(b):
    i, out = 0, []
    while i + 4 <= len(b):
        if b[i] == 0xFF and (b[i+1] & 0xE0) == 0xE0:
            br = [0,32,40,48,56,64,80,96,112,128,160,192,224,256,320][b[i+2] >> 4]
            pad = (b[i+2] >> 1) & 1
            n = 144000 * br // 44100 + pad
            out.append(i); i += n
        else:
            i += 1
    return out
starts = frames(data)
cuts = [starts[40], starts[120], starts[200]]
out, prev = bytearray(), 0
for c in cuts:
    out += data[prev:c]
    junk = bytes(random.randrange(256) for _ in range(137))
    junk = junk.replace(b"\xff", b"\x00")  # no accidental sync words
    out += junk
    prev = c
out += data[prev:]
open("junk.mp3", "wb").write(out)
PY

# 6. Truncated: the CBR file cut in the middle of a frame.
head -c $(( $(stat -c %s cbr128.mp3) * 2 / 3 + 123 )) cbr128.mp3 > truncated.mp3

ls -l *.mp3

# 7. The station's built-in demo audio (embedded by internal/testaudio): 30 s of a
#    slowly changing chord with tremolo, 128k CBR stereo, so that a looped stream
#    has some music-like variety and the encoder uses its bit reservoir.
demo='sine=frequency=220:sample_rate=44100:duration=30[a];sine=frequency=277.18:sample_rate=44100:duration=30[b];sine=frequency=329.63:sample_rate=44100:duration=30[c];sine=frequency=440:sample_rate=44100:duration=30,tremolo=f=0.5:d=0.9[d];[a][b][c][d]amix=inputs=4,tremolo=f=2:d=0.4,aecho=0.8:0.7:60:0.3,afade=t=in:d=0.5,aformat=channel_layouts=stereo'
ffmpeg -nostdin -loglevel error -y -filter_complex "$demo" -c:a libmp3lame -b:a 128k \
  -id3v2_version 3 -metadata title="p2pradio demo tone" -write_xing 0 ../internal/testaudio/demo.mp3
