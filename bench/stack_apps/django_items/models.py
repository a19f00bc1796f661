from django.db import models


class Item(models.Model):
    name = models.CharField(max_length=100)

    class Meta:
        db_table = "items"  # made and seeded by bench/stacks.py, as for every stack
