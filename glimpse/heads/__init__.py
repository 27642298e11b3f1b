"""Dense heads (RPN, RetinaNet) and RoI heads (box, mask, cascade): forward / loss / predict."""
