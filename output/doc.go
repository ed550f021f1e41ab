// Package output is the OUTPUT block of p2pradio: it hands each verified
// chunk on as soon as it arrives, to the node's children in the overlay
// (Fanout) and, through the recent Window, to joiners that need a burst to
// start fast and to fill their MP3 bit reservoir.
package output
