#!/usr/bin/env bash
# Regenerates the test MP3 files in this folder with real encoders.
# Needs: ffmpeg, lame, sox, espeak-ng (apt-get install -y ffmpeg lame sox libsox-fmt-mp3 espeak-ng).
# The files are committed; this script documents exactly how they were made.
# `make.sh matrix` remakes only the decoder matrix (section 8, matrix/).
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
if [ "${1:-}" != matrix ]; then

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
fi

# 8. The decoder matrix (matrix/, 1.6 s each): every sample rate of MPEG-1
#    (32, 44.1, 48 kHz), MPEG-2 (16, 22.05, 24) and MPEG-2.5 (8, 11.025, 12)
#    times every channel mode: s = stereo (lame -m s), j = joint stereo as
#    the encoder picks mid/side per frame (ffmpeg's libmp3lame), f = mid/side
#    on every frame (lame -m f), d = dual channel with CRC (lame -m d -p),
#    m = mono (sox), and for MPEG-1 i = intensity stereo, x = mid/side and
#    intensity stereo. No encoder here writes intensity stereo (lame 3.100
#    has none), so i and x are lame's -m s and -m f frames with the
#    intensity bit of the mode extension set in the header (mode joint) of
#    each audio frame whose granules are all long blocks: the decoder then
#    takes the right channel's zero upper bands from the left by the right
#    channel's scale factors, its intensity positions. (In short blocks
#    mpg123 and ffmpeg disagree on such frames; in MPEG-2 the bit changes
#    how the right channel's scale factors are read, so the frames would be
#    garbage: neither is made.) Each (rate,
#    mode) gets one of CBR low, CBR high, VBR low (-V 9), VBR high (-V 0),
#    in turn, so that every mode meets every rate control at some rate and
#    every rate meets all four; CBR low/high is 32/320 kbit/s for MPEG-1,
#    16/160 for MPEG-2, 8/64 for MPEG-2.5. Plus talk radio as in the
#    go-mp3 bug (22.05 and 24 kHz joint stereo at 32 and 64 kbit/s, lame)
#    and shine (ffmpeg's libshine, another encoder) at 44.1 and 48 kHz.
#    The source: 1 s of espeak-ng speech with L = R, then 0.6 s of two
#    plucked strings mixed differently into L and R, R low-passed at 1.5 kHz
#    (so that intensity stereo has upper bands to fill).
mkdir -p matrix
rm -f matrix/*.mp3
espeak-ng -w "$tmp/talk.wav" "Talk radio, all night long."
rates=(32000 44100 48000 16000 22050 24000 8000 11025 12000)
for ri in "${!rates[@]}"; do
  r=${rates[$ri]}
  modes=(s j f d m)
  [ "$ri" -lt 3 ] && modes+=(i x)
  khz=$(python3 -c "print($r/1000)")
  sox "$tmp/talk.wav" -r "$r" -c 2 "$tmp/speech$r.wav" trim 0.15 1.0
  sox -n -r "$r" -c 2 "$tmp/pluck$r.wav" synth 0.6 pluck 220 pluck 330 remix 1v0.8,2v0.3 2v0.8,1v0.3 gain -3
  sox "$tmp/pluck$r.wav" "$tmp/left$r.wav" remix 1
  sox "$tmp/pluck$r.wav" "$tmp/right$r.wav" remix 2 lowpass 1500
  sox -M "$tmp/left$r.wav" "$tmp/right$r.wav" "$tmp/music$r.wav"
  sox "$tmp/speech$r.wav" "$tmp/music$r.wav" "$tmp/src$r.wav"
  case $r in
    32000|44100|48000) lo=32 hi=320 ;;
    16000|22050|24000) lo=16 hi=160 ;;
    *) lo=8 hi=64 ;;
  esac
  for mi in "${!modes[@]}"; do
    m=${modes[$mi]}
    case $(( (ri + mi) % 4 )) in
      0) enc=cbr$lo; lameq=(-b "$lo"); ffq=(-b:a "${lo}k"); soxq=$lo ;;
      1) enc=cbr$hi; lameq=(-b "$hi"); ffq=(-b:a "${hi}k"); soxq=$hi ;;
      2) enc=vbr9; lameq=(-V 9); ffq=(-q:a 9); soxq=-9.2 ;;
      3) enc=vbr0; lameq=(-V 0); ffq=(-q:a 0); soxq=-0.2 ;;
    esac
    out="matrix/${r}_${m}_${enc}.mp3"
    case $m in
      s|i) lame --quiet -m s "${lameq[@]}" --resample "$khz" "$tmp/src$r.wav" "$out" ;;
      f|x) lame --quiet -m f "${lameq[@]}" --resample "$khz" "$tmp/src$r.wav" "$out" ;;
      d) lame --quiet -m d -p "${lameq[@]}" --resample "$khz" "$tmp/src$r.wav" "$out" ;;
      j) ffmpeg -nostdin -loglevel error -y -i "$tmp/src$r.wav" -ar "$r" -c:a libmp3lame -joint_stereo 1 "${ffq[@]}" "$out" ;;
      m) sox "$tmp/src$r.wav" -c 1 -C "$soxq" "$out" ;;
    esac
    case $m in
      i|x) python3 - "$out" <<'PY' ;;
import sys
# Set the intensity stereo bit (and mode joint) in the header of every
# MPEG-1 audio frame of long blocks only; Xing/Info frames are left alone
# (their LAME tag has a CRC).
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
if b[:3] == b"ID3":
    i = 10 + (b[6] << 21 | b[7] << 14 | b[8] << 7 | b[9])
else:
    i = 0
rates = {3: [44100, 48000, 32000], 2: [22050, 24000, 16000], 0: [11025, 12000, 8000]}
v1 = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320]
v2 = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160]
n = 0
while i + 4 <= len(b) and b[i] == 0xFF and b[i + 1] & 0xE0 == 0xE0:
    ver = (b[i + 1] >> 3) & 3
    rate = rates[ver][(b[i + 2] >> 2) & 3]
    br = (v1 if ver == 3 else v2)[b[i + 2] >> 4]
    size = (144 if ver == 3 else 72) * br * 1000 // rate + ((b[i + 2] >> 1) & 1)
    side = 4 + (32 if ver == 3 else 17)
    assert ver == 3 and b[i + 1] & 1  # MPEG-1, no CRC
    bits = int.from_bytes(b[i + 4:i + 36], "big")
    # window_switching_flag of granule g, channel c: after main_data_begin
    # (9), private bits (3) and scfsi (8), 59 bits per granule and channel,
    # the flag 33 bits into them.
    long_only = all(not (bits >> (255 - (20 + 59 * k + 33))) & 1 for k in range(4))
    if long_only and b[i + side:i + side + 4] not in (b"Xing", b"Info"):
        b[i + 3] = (b[i + 3] & 0x0F) | 0x40 | (b[i + 3] & 0x20) | 0x10
        n += 1
    i += size
assert n > 0
open(p, "wb").write(b)
PY
    esac
  done
done
for r in 22050 24000; do
  for b in 32 64; do
    lame --quiet -m j -b "$b" --resample "$(python3 -c "print($r/1000)")" "$tmp/src$r.wav" "matrix/${r}_j_cbr${b}_talk.mp3"
  done
done
for r in 44100 48000; do
  ffmpeg -nostdin -loglevel error -y -i "$tmp/src$r.wav" -c:a libshine -b:a 128k "matrix/${r}_s_cbr128_shine.mp3"
done
ls -l matrix | awk '{s += $5} END {print NR - 1, "files,", s, "bytes"}'
