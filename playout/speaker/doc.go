// Package speaker plays PCM from a playout.Player on the sound card,
// through oto (github.com/ebitengine/oto/v3). It is the only part of
// p2pradio that needs cgo (and the ALSA headers, libasound2-dev, on Linux);
// built without cgo on Linux, a Speaker fails with ErrDevice.
//
// oto allows one audio context per process, at one sample rate. This
// package opens it lazily, at the rate of the first PCM written to any
// Speaker, and shares it: Speakers at that rate play mixed together, and a
// Speaker at another rate fails with ErrSampleRate.
//
// A Speaker is a playout.ClockedSink: its queue drains at the sound card's
// pace, WritePCM blocks while the queue is full, and a Player paces itself
// by Queued, so the device's clock drives playback.
package speaker
