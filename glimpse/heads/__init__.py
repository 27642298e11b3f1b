"""Dense heads (RPN, RetinaNet), RoI heads (box, mask, standard, cascade, htc) and HTC's fused
semantic head: forward / loss / predict."""
