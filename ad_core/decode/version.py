"""The decoder's version: the decoded_signals asset's code_version (a change marks decoded drives stale)."""

# 1.1: float columns BYTE_STREAM_SPLIT, frame tables uncompressed. 1.1.1: an unreadable channel is left out of
# its group (with a note in the stream report) instead of failing the whole group.
# 1.1.2: MDF samples out of recorded order are counted (report + file metadata ``out_of_order_samples``); MCAP
# messages with times >= 2^63 are dropped and noted instead of failing the file.
# 1.2.0: CAN frames of unknown ids kept (can__unknown_frames); ISO-TP reassembly; one table per multiplexor value;
# all-null messages flagged; ROS 2 through the rosbags typestore where mcap-ros2-support fails; computed layouts.
DECODER_VERSION = "1.2.0"
