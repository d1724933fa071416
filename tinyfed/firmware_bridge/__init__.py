"""Host side of the serial link to boards; grows with the firmware issue."""
