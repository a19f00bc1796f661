"""A book club's models: a module of their own, on the layer's public names only."""

from __future__ import annotations

from sqlalchemy import ForeignKey, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from service.db import Model


class Member(Model):
    __tablename__ = "club_members"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    loans: Mapped[list[Loan]] = relationship(back_populates="member", order_by="Loan.id")


class Volume(Model):
    __tablename__ = "club_volumes"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    shelf: Mapped[str] = mapped_column(String(20), default="open")
    version: Mapped[int] = mapped_column()

    __mapper_args__ = {"version_id_col": version}  # optimistic locking


class Loan(Model):
    __tablename__ = "club_loans"

    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("club_members.id"))
    volume_id: Mapped[int] = mapped_column(ForeignKey("club_volumes.id"))
    member: Mapped[Member] = relationship(back_populates="loans")


class Tag(Model):
    __tablename__ = "club_tags"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    note: Mapped[str] = mapped_column(String(100), default="")


class AuditBase(DeclarativeBase):
    """The audit database's models: another database, with a metadata of its own."""

    metadata = MetaData()


class AuditEntry(AuditBase):
    __tablename__ = "club_audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    what: Mapped[str] = mapped_column(String(100))
