"""Dense heads (RPN, RetinaNet) and RoI heads (box, mask, standard, cascade): forward / loss /
predict."""
